"""Hostile and corrupt assets: meshes (rigid objects, render meshes, MPM sampling), target videos
and frame folders, paths that leave the scene's folder, Python scene files, and a scan of the
package for loaders that could execute data (pickle, eval). Each failure must be one clear error
naming the file. See docs/hardening.md."""

from __future__ import annotations

import ast
import os
import struct
import subprocess
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest

from hybridsim import assets
from hybridsim.assets import load_mesh, resolve_asset_path
from hybridsim.errors import AssetError, HybridsimError, ResourceError, SceneError
from hybridsim.fit.target import load_target_frames
from hybridsim.render.video import read_frame_folder, write_video
from hybridsim.scene import load_scene

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("obj", "stl", "ply", "glb")
HEAD = """
name = "hostile"
precision = "float64"
device = "cpu"
[time]
fps = 30
frames = 2
substeps = 2
[camera]
position = [0.0, -1.6, 0.9]
look_at = [0.0, 0.0, 0.05]
width = 8
height = 8
"""


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
    for name in (assets.ALLOW_OUTSIDE_ENV, assets.MAX_MESH_FACES_ENV, assets.MAX_MESH_BYTES_ENV,
                 assets.MAX_DECODED_BYTES_ENV):
        monkeypatch.delenv(name, raising=False)


def _box(extents=(0.2, 0.2, 0.2)):
    import trimesh

    return trimesh.creation.box(extents=extents)


def _open_box():
    mesh = _box()
    mesh.update_faces(np.arange(len(mesh.faces)) > 0)  # punch a hole: one triangle missing
    return mesh


def _mesh_scene(folder: Path, file: str, extra: str = "") -> Path:
    path = folder / "scene.toml"
    path.write_text(HEAD + f'[[objects]]\ntype = "mesh"\nposition = [0, 0, 0.5]\nfile = "{file}"\n{extra}')
    return path


def _rigid_model(scene: Path):
    from hybridsim.sim.rigid import rigid_model
    from hybridsim.sim.world import World

    return rigid_model(World(load_scene(scene)))


def _render_meshes(scene: Path, model=None):
    from hybridsim.render.rigid import rigid_object_meshes
    from hybridsim.sim.world import World

    return rigid_object_meshes(World(load_scene(scene)), model)  # the mesh is loaded before the model is used


def _mpm_fill(path: Path):
    from hybridsim.solvers.mpm import MPMBuilder

    builder = MPMBuilder(dim=3, resolution=9)
    material = builder.add_material("elastic", youngs_modulus=1e4)
    return builder.add_mesh(path, material=material, translate=(0.5, 0.5, 0.5))


def _assert_names(error: HybridsimError, file: Path, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert error.file == str(file) and str(file) in message, message
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------------------------
# Corrupt meshes: truncated, garbage, empty; every consumer names the file
# --------------------------------------------------------------------------------------------


def _corrupt_mesh_files(folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for kind in FORMATS:
        data = _box().export(file_type=kind)
        data = data.encode() if isinstance(data, str) else data
        for fraction in (0.0, 0.05, 0.3, 0.6, 0.9, 0.98):
            path = folder / f"cut{int(fraction * 100):02d}.{kind}"
            path.write_bytes(data[: int(len(data) * fraction)])
            files.append(path)
        for size in (16, 700, 50_000):
            path = folder / f"junk{size}.{kind}"
            path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
            files.append(path)
        path = folder / f"text.{kind}"
        path.write_text("this is not a mesh\n" * 20)
        files.append(path)
    return files


def test_corrupt_mesh_files_are_asset_errors_naming_the_file_for_every_consumer(tmp_path):
    files = _corrupt_mesh_files(tmp_path / "scene")
    assert len(files) == 40
    for path in files:
        try:
            closed = load_mesh(path).is_watertight  # a prefix may still hold a (partial) mesh
        except AssetError as error:
            _assert_names(error, path)
            closed = None
        scene = _mesh_scene(path.parent, path.name, "density = 500.0\n")  # mass from the volume
        consumers = [lambda: _rigid_model(scene), lambda: _mpm_fill(path)]  # these need a closed surface
        if closed is None:
            consumers.append(lambda: _render_meshes(scene))
        if closed:
            continue
        for consumer in consumers:
            with pytest.raises(AssetError) as info:
                consumer()
            _assert_names(info.value, path)


def test_truncated_meshes_that_still_parse_are_refused_where_a_volume_is_needed(tmp_path):
    data = _box().export(file_type="obj").encode()
    path = tmp_path / "cut.obj"
    path.write_bytes(data[: int(len(data) * 0.9)])  # parses, but some faces are gone
    assert 0 < len(load_mesh(path).faces) < 12
    with pytest.raises(AssetError) as info:
        _rigid_model(_mesh_scene(tmp_path, "cut.obj", "density = 500.0\n"))
    _assert_names(info.value, path, "not watertight")
    with pytest.raises(AssetError) as info:
        _mpm_fill(path)
    _assert_names(info.value, path, "not watertight")


def test_non_watertight_mesh_says_why_and_what_to_do(tmp_path):
    path = tmp_path / "open.stl"
    _open_box().export(path)
    scene = _mesh_scene(tmp_path, "open.stl", "density = 500.0\n")
    with pytest.raises(AssetError) as info:
        _rigid_model(scene)
    _assert_names(info.value, path, "not watertight (3 open edges)", "mass", "repair")
    with pytest.raises(AssetError) as info:
        _mpm_fill(path)
    _assert_names(info.value, path, "not watertight (3 open edges)", "cannot be filled", "repair")
    # with a mass the volume is not needed: the body takes the hull's inertia
    model = _rigid_model(_mesh_scene(tmp_path, "open.stl", "mass = 2.0\n"))
    assert float(model.body_mass[0]) == pytest.approx(2.0)
    assert np.allclose(model.body_inertia[0].detach().numpy(), 2.0 * 0.04 / 6.0, rtol=1e-6)  # a cube's, like the hull's
    # a flat open mesh has no solid hull either
    import trimesh

    flat = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], faces=[[0, 1, 2], [1, 3, 2]])
    flat.export(tmp_path / "flat.ply")
    with pytest.raises(AssetError) as info:
        _rigid_model(_mesh_scene(tmp_path, "flat.ply", "mass = 1.0\n"))
    _assert_names(info.value, tmp_path / "flat.ply", "encloses no volume")


@pytest.mark.parametrize("kind", FORMATS)
def test_meshes_over_the_face_limit_are_refused_with_the_limit(tmp_path, monkeypatch, kind):
    import trimesh

    path = tmp_path / f"ball.{kind}"
    trimesh.creation.icosphere(subdivisions=3, radius=0.2).export(path)  # 1280 faces
    assert len(load_mesh(path).faces) == 1280
    monkeypatch.setenv(assets.MAX_MESH_FACES_ENV, "1000")
    for call in (lambda: load_mesh(path), lambda: _rigid_model(_mesh_scene(tmp_path, path.name)),
                 lambda: _mpm_fill(path)):
        with pytest.raises(ResourceError) as info:
            call()
        _assert_names(info.value, path, "1280 faces", "limit of 1000", assets.MAX_MESH_FACES_ENV)
    with pytest.raises(ResourceError, match="limit of 100"):
        load_mesh(path, max_faces=100)  # the Python argument wins over the environment


def test_declared_face_counts_and_file_sizes_are_checked_before_parsing(tmp_path, monkeypatch):
    stl = tmp_path / "bomb.stl"
    stl.write_bytes(b"\0" * 80 + struct.pack("<I", 2**31) + b"\0" * 150)  # claims 2^31 triangles
    with pytest.raises(AssetError) as info:
        load_mesh(stl)
    _assert_names(info.value, stl, "truncated", "declares 2147483648 triangles")
    stl.write_bytes(b"\0" * 80 + struct.pack("<I", 1500) + b"\0" * 50 * 1500)  # as long as it says
    with pytest.raises(ResourceError) as info:
        load_mesh(stl, max_faces=1000)
    _assert_names(info.value, stl, "declares 1500 faces", "limit of 1000")
    ply = tmp_path / "bomb.ply"
    ply.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                    b"property float z\nelement face 4000000000\nproperty list uchar int vertex_indices\nend_header\n")
    with pytest.raises(ResourceError, match="declares 4000000000 faces"):
        load_mesh(ply)
    big = tmp_path / "big.obj"
    _box().export(big)
    monkeypatch.setenv(assets.MAX_MESH_BYTES_ENV, "100")
    with pytest.raises(ResourceError) as info:
        load_mesh(big)
    _assert_names(info.value, big, "limit of 100", assets.MAX_MESH_BYTES_ENV)
    monkeypatch.setenv(assets.MAX_MESH_BYTES_ENV, "lots")
    with pytest.raises(ResourceError, match="must be a positive integer"):
        load_mesh(big)


def test_mesh_formats_paths_and_contents_are_checked(tmp_path):
    for name in ("box.gltf", "box.dae", "box", "box.py"):
        (tmp_path / name).write_text("x")
        with pytest.raises(AssetError, match="unsupported mesh format"):
            load_mesh(tmp_path / name)
    with pytest.raises(AssetError, match="not found"):
        load_mesh(tmp_path / "missing.obj")
    (tmp_path / "dir.obj").mkdir()
    with pytest.raises(AssetError, match="not a regular file"):
        load_mesh(tmp_path / "dir.obj")
    (tmp_path / "bad_index.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 99\n")
    with pytest.raises(AssetError, match="bad_index.obj"):
        load_mesh(tmp_path / "bad_index.obj")


def test_mesh_side_files_are_never_opened(tmp_path, monkeypatch):
    import builtins

    secret = tmp_path / "secret.mtl"
    secret.write_text("newmtl x\nKd 1 0 0\n")
    folder = tmp_path / "scene"
    folder.mkdir()
    path = folder / "cube.obj"
    path.write_text("mtllib ../secret.mtl\nusemtl x\n" + _box().export(file_type="obj"))
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    mesh = load_mesh(path)
    assert len(mesh.faces) == 12
    assert not any("secret" in name for name in opened), opened


# --------------------------------------------------------------------------------------------
# Paths in scene files: one check for rigid meshes, render meshes and MPM bodies
# --------------------------------------------------------------------------------------------


def test_scene_paths_cannot_leave_the_scene_folder_unless_allowed(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    _box().export(outside / "cube.obj")
    folder = tmp_path / "scene"
    (folder / "meshes").mkdir(parents=True)
    _box().export(folder / "meshes" / "inside.obj")
    (folder / "link.obj").symlink_to(outside / "cube.obj")  # a link to a file outside
    (folder / "linkdir").symlink_to(outside, target_is_directory=True)  # a link to a folder outside
    (folder / "good_link.obj").symlink_to(folder / "meshes" / "inside.obj")  # a link that stays inside
    scene = str(folder / "scene.toml")

    assert resolve_asset_path(scene, "meshes/inside.obj", field="f") == folder / "meshes" / "inside.obj"
    assert resolve_asset_path(scene, "meshes/../meshes/inside.obj", field="f").resolve() == \
        (folder / "meshes" / "inside.obj").resolve()
    assert resolve_asset_path(scene, "good_link.obj", field="f").is_file()
    for escape in ("link.obj", "linkdir/cube.obj", "../outside/cube.obj", "meshes/../../outside/cube.obj",
                   str(outside / "cube.obj"), "linkdir/../scene/meshes/inside.obj/../../../outside/cube.obj"):
        with pytest.raises(SceneError) as info:
            resolve_asset_path(scene, escape, field="objects[0].file")
        error = info.value
        assert error.file == scene and error.field == "objects[0].file", str(error)
        assert "inside the scene file's folder" in str(error) and assets.ALLOW_OUTSIDE_ENV in str(error)
    (folder / "loop.obj").symlink_to(folder / "loop.obj")
    with pytest.raises(SceneError, match="inside the scene file's folder"):
        resolve_asset_path(scene, "loop.obj", field="f")

    # every consumer goes through it: the rigid model, the render meshes, MPM mesh bodies
    link_scene = _mesh_scene(folder, "link.obj", "mass = 1.0\n")
    for call in (lambda: _rigid_model(link_scene), lambda: _render_meshes(link_scene)):
        with pytest.raises(SceneError) as info:
            call()
        assert info.value.field == "objects[0].file" and info.value.file == str(link_scene)
    from hybridsim.sim import rigid as sim_rigid

    assert sim_rigid.mesh_file.__code__.co_names.count("resolve_asset_path") == 1
    try:
        from hybridsim.sim.mpm import mpm_body_file
    except ImportError:
        mpm_body_file = None
    if mpm_body_file is not None:  # MPM scenes ([mpm] bodies with shape = "mesh") refuse the same links
        from types import SimpleNamespace

        spec = SimpleNamespace(source=scene, mpm=SimpleNamespace(bodies=[SimpleNamespace(file="link.obj")]))
        with pytest.raises(SceneError) as info:
            mpm_body_file(spec, 0)
        assert info.value.field == "mpm.bodies[0].file"

    # explicit opt-in: the environment variable (or allow_outside=True from Python)
    assert resolve_asset_path(scene, "../outside/cube.obj", field="f", allow_outside=True).resolve() == \
        (outside / "cube.obj").resolve()
    monkeypatch.setenv(assets.ALLOW_OUTSIDE_ENV, "1")
    assert resolve_asset_path(scene, "link.obj", field="f").is_file()
    assert resolve_asset_path(scene, str(outside / "cube.obj"), field="f") == outside / "cube.obj"
    model = _rigid_model(link_scene)
    assert float(model.body_mass[0]) == pytest.approx(1.0)
    assert len(_render_meshes(link_scene, model)[0][1]) == 12


# --------------------------------------------------------------------------------------------
# Fit targets: truncated and garbage videos, bad frame folders
# --------------------------------------------------------------------------------------------


def _frames(count=12, height=24, width=32, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    return np.repeat(base, count, axis=0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    plain = folder / "plain.mp4"
    write_video(plain, _frames(20), fps=10)
    fast = folder / "fast.mp4"  # moov atom first: a cut loses frames at the end, not the index
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(plain), "-c", "copy",
                    "-movflags", "+faststart", str(fast)], check=True)
    return plain, fast


def test_truncated_videos_are_asset_errors_at_every_cut(clips, tmp_path):
    tried = 0
    for clip in clips:
        data = clip.read_bytes()
        frames, _ = load_target_frames(clip)
        assert len(frames) == 20
        for cut in np.linspace(0, len(data) - 100, 24).astype(int):
            path = tmp_path / f"cut{cut}_{clip.name}"
            path.write_bytes(data[:cut])
            with pytest.raises(AssetError) as info:
                load_target_frames(path)
            _assert_names(info.value, path)
            tried += 1
    assert tried == 48


def test_garbage_videos_are_asset_errors_naming_the_file(tmp_path):
    rng = np.random.default_rng(1)
    png = tmp_path / "frame.png"
    iio.imwrite(png, _frames(1)[0])
    cases = {"empty.mp4": b"", "noise.mp4": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
             "text.mp4": b"hello\n" * 100, "header_only.mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64,
             "png_renamed.mp4": png.read_bytes(), "noise.avi": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AssetError) as info:
            load_target_frames(path)
        _assert_names(info.value, path)


def test_video_that_decodes_past_the_limit_is_refused(clips, monkeypatch):
    plain, _ = clips
    monkeypatch.setenv(assets.MAX_DECODED_BYTES_ENV, str(32 * 24 * 3 * 5))  # five frames
    with pytest.raises(ResourceError) as info:
        load_target_frames(plain)
    _assert_names(info.value, plain, "limit of 11520 bytes", assets.MAX_DECODED_BYTES_ENV)


def _folder(folder: Path, names, size=(24, 32)):
    folder.mkdir(parents=True)
    for k, name in enumerate(names):
        iio.imwrite(folder / name, _frames(1, *size, seed=k)[0])
    return folder


def test_frame_folders_for_fit_targets_are_checked(tmp_path):
    good = _folder(tmp_path / "good", [f"frame_{i:04d}.png" for i in range(5)])
    (good / ".DS_Store").write_bytes(b"\0\1")  # hidden files are skipped
    frames, fps = load_target_frames(good)
    assert frames.shape == (5, 24, 32, 3) and fps is None

    cases = [
        (["f_1.png", "f_2.png", "f_4.png", "f_5.png"], "frame 3 missing", "'f_2.png' to 'f_4.png'"),
        (["f_1.png", "f_2.png", "f_9.png"], "frames 3 to 8 missing", "f_9.png"),
        (["f_1.png", "f_01.png", "f_2.png"], "same frame number 1", "f_01.png"),
        (["a_1.png", "a_2.png", "b_1.png"], "more than one naming pattern", "b_1.png"),
        (["f_1.png", "f_2.png", "cover.png"], "no frame number", "cover.png"),
        ([], "zero frames", ""),
    ]
    for index, (names, *fragments) in enumerate(cases):
        folder = _folder(tmp_path / f"case{index}", names)
        with pytest.raises(AssetError) as info:
            load_target_frames(folder)
        _assert_names(info.value, folder, *fragments)

    other = _folder(tmp_path / "other", ["f_1.png", "f_2.png"])
    (other / "notes.txt").write_text("x")
    with pytest.raises(AssetError) as info:
        load_target_frames(other)
    _assert_names(info.value, other, "'notes.txt' is a file, not a png/jpg frame")
    (other / "notes.txt").unlink()
    (other / "sub").mkdir()
    with pytest.raises(AssetError, match="'sub' is a folder"):
        load_target_frames(other)
    (other / "sub").rmdir()
    assert read_frame_folder(other).shape[0] == 2

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(3):
        iio.imwrite(mixed / f"f_{i}.png", _frames(1, 24, 32 if i != 2 else 30)[0])
    with pytest.raises(AssetError) as info:
        load_target_frames(mixed)
    assert str(mixed / "f_2.png") in str(info.value) and "differs" in str(info.value)

    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        iio.imwrite(broken / f"f_{i}.png", _frames(1)[0])
    (broken / "f_1.png").write_bytes((broken / "f_1.png").read_bytes()[:40])  # truncated png
    with pytest.raises(AssetError) as info:
        load_target_frames(broken)
    assert str(broken / "f_1.png") in str(info.value) and "\n" not in str(info.value)


def test_frame_folder_decoding_past_the_limit_is_refused_before_reading_it(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "frames", [f"f_{i}.png" for i in range(4)])
    monkeypatch.setenv(assets.MAX_DECODED_BYTES_ENV, str(24 * 32 * 3 * 3))
    with pytest.raises(ResourceError) as info:
        load_target_frames(folder)
    _assert_names(info.value, folder, "4 frames of 32x24")


def test_cli_fit_with_a_truncated_video_is_one_line_exit_2(clips, tmp_path, capsys):
    from hybridsim.cli import main

    data = clips[1].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 3 // 4])
    run_dir = tmp_path / "run"
    code = main(["fit", str(ROOT / "scenes" / "bounce_fit.toml"), "--target", str(cut), "-o", str(run_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(cut) in err and "Traceback" not in err
    assert not run_dir.exists()


# --------------------------------------------------------------------------------------------
# Nothing is executed: Python scene files are refused; no pickle or eval on loaded data
# --------------------------------------------------------------------------------------------


def test_python_scene_files_are_refused_never_run(tmp_path, capsys):
    from hybridsim.cli import main

    marker = tmp_path / "ran"
    script = tmp_path / "scene.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(SceneError) as info:
        load_scene(script)
    _assert_names(info.value, script, "Python file", "never executed", "--python")
    for argv in (["render", str(script), "-o", str(tmp_path / "o.mp4")], ["gradcheck", str(script)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Python file" in err
    assert not marker.exists()


# What may load or run code from data, and the one place that runs code on purpose.
_ALLOWED = {
    # `hybridsim bench` imports the benchmark scripts of the checkout (or $HYBRIDSIM_BENCHMARKS):
    # code the user asked to run, not data.
    ("bench.py", "exec_module"),
    # `hybridsim --python COMMAND script.py` runs a Python scene script the user named explicitly.
    ("loader.py", "run_path"),
}


def _call_name(node: ast.Call) -> str:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_constant(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Calls in ``source`` that could execute data: pickle-family loads, torch.load without
    weights_only=True, np.load with allow_pickle other than False, yaml.load without a safe
    loader, torch.jit.load, eval / exec / compile / __import__, and module execution."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        last = name.rsplit(".", 1)[-1]
        head = name.split(".", 1)[0]
        bad = None
        if head in ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve") and \
                last in ("load", "loads", "open", "Unpickler"):
            bad = "unpickles"
        elif name in ("Unpickler", "pickle.Unpickler"):
            bad = "unpickles"
        elif name == "torch.load" and not _is_constant(_keyword(node, "weights_only"), True):
            bad = "torch.load without weights_only=True"
        elif name in ("torch.jit.load", "jit.load"):
            bad = "loads TorchScript (code)"
        elif last == "load" and head in ("np", "numpy"):
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not _is_constant(flag, False):  # numpy's default is False
                bad = "np.load with allow_pickle"
        elif name in ("yaml.load", "yaml.load_all") and not (
                _keyword(node, "Loader") is not None and "Safe" in ast.unparse(_keyword(node, "Loader"))):
            bad = "yaml.load without SafeLoader"
        elif name in ("yaml.unsafe_load", "yaml.full_load"):
            bad = "unsafe yaml"
        elif name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
            bad = "evaluates code"
        elif last in ("exec_module", "run_path", "run_module") or name.startswith("runpy."):
            bad = "executes a module"
        if bad and (Path(filename).name, last) not in _ALLOWED:
            found.append(f"{filename}:{node.lineno}: {name}(...) {bad}")
    return found


def test_the_scanner_flags_what_it_should():
    hostile = ("import pickle, torch, numpy as np, yaml\npickle.load(f)\npickle.loads(b)\ntorch.load(p)\n"
               "torch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\nyaml.load(s)\neval(text)\n"
               "exec(code)\n__import__(name)\ntorch.jit.load(p)\n")
    assert len(unsafe_calls(hostile)) == 10
    safe = ("import torch, numpy as np, yaml\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
            "np.load(p, allow_pickle=False)\nyaml.load(s, Loader=yaml.SafeLoader)\nmodel.eval()\n")
    assert unsafe_calls(safe) == []


def test_package_source_loads_no_pickles_and_evaluates_no_data():
    files = sorted((ROOT / "hybridsim").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    assert len(files) > 40
    found = []
    for path in files:
        found += unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == [], "\n".join(found)


# --------------------------------------------------------------------------------------------
# Scene files over the size limit are refused before they are read in full
# --------------------------------------------------------------------------------------------


def test_oversized_scene_files_are_refused_before_parsing(tmp_path, monkeypatch):
    from hybridsim.scene.loader import MAX_SCENE_BYTES

    path = tmp_path / "huge.toml"
    with open(path, "wb") as handle:
        handle.truncate(MAX_SCENE_BYTES + 1)  # sparse: no time spent writing it
    with pytest.raises(SceneError) as info:
        load_scene(path)
    _assert_names(info.value, path, f"limit of {MAX_SCENE_BYTES}", "HYBRIDSIM_MAX_SCENE_BYTES")
    small = tmp_path / "small.toml"
    small.write_text((ROOT / "scenes" / "bounce.toml").read_text())
    monkeypatch.setenv("HYBRIDSIM_MAX_SCENE_BYTES", "100")
    with pytest.raises(SceneError, match="limit of 100"):
        load_scene(small)
    if os.path.exists("/dev/zero"):  # not a regular file: reading stops at the limit
        monkeypatch.setenv("HYBRIDSIM_MAX_SCENE_BYTES", "4096")
        with pytest.raises(SceneError, match="more than the limit of 4096"):
            load_scene("/dev/zero")


# --------------------------------------------------------------------------------------------
# Slow: many corrupted meshes and videos (counts in docs/hardening.md)
# --------------------------------------------------------------------------------------------

MESH_VARIANTS = int(os.environ.get("HYBRIDSIM_FUZZ_MESHES", "300"))


def _corrupt(data: bytes, rng) -> bytes:
    """A random truncation, byte flips, a spliced-in chunk of noise, or a mix."""
    data = bytearray(data)
    op = rng.integers(0, 4)
    if op in (0, 3):
        data = data[: rng.integers(0, len(data) + 1)]
    if op in (1, 3) and data:
        for _ in range(rng.integers(1, 20)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
    if op == 2:
        at = rng.integers(0, len(data) + 1)
        data[at:at] = rng.integers(0, 256, rng.integers(1, 400), dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", FORMATS)
def test_many_corrupted_meshes_give_asset_errors_or_usable_meshes(tmp_path, kind):
    import trimesh

    from hybridsim.solvers.mpm import load_watertight_mesh
    from hybridsim.solvers.rigid.shapes import load_convex_mesh

    rng = np.random.default_rng(list(FORMATS).index(kind))
    sources = [_box().export(file_type=kind), trimesh.creation.icosphere(subdivisions=2).export(file_type=kind)]
    sources = [s.encode() if isinstance(s, str) else s for s in sources]
    outcomes = {"error": 0, "loaded": 0}
    for i in range(MESH_VARIANTS):
        path = tmp_path / f"v{i}.{kind}"
        path.write_bytes(_corrupt(sources[i % 2], rng))
        for load in (load_mesh, load_convex_mesh, load_watertight_mesh):
            try:
                load(path)
            except AssetError as error:  # ResourceError is a limit, also acceptable
                _assert_names(error, path)
                outcomes["error"] += 1
            except ResourceError as error:
                _assert_names(error, path)
                outcomes["error"] += 1
            else:
                outcomes["loaded"] += 1
    print(f"\n{kind}: {MESH_VARIANTS} corrupted files x 3 loaders: {outcomes}")


@pytest.mark.slow
def test_every_cut_and_many_corruptions_of_a_video(clips, tmp_path):
    rng = np.random.default_rng(7)
    outcomes = {"cut": 0, "corrupt error": 0, "corrupt decoded": 0}
    for clip in clips:
        data = clip.read_bytes()
        for cut in np.linspace(0, len(data) - 1, 150).astype(int):
            path = tmp_path / "cut.mp4"
            path.write_bytes(data[:cut])
            try:
                frames, _ = load_target_frames(path)
            except AssetError as error:
                _assert_names(error, path)
                outcomes["cut"] += 1
            else:  # only trailing metadata was cut: every frame is there, never a silently shorter clip
                assert frames.shape == (20, 24, 32, 3), (clip.name, cut, len(data))
                outcomes["cut, metadata only"] = outcomes.get("cut, metadata only", 0) + 1
        for _ in range(100):
            path = tmp_path / "corrupt.mp4"
            path.write_bytes(_corrupt(data, rng))
            try:
                frames, _ = load_target_frames(path)
            except AssetError as error:
                _assert_names(error, path)
                outcomes["corrupt error"] += 1
            else:  # flips the decoder shrugs off: whole frames of the right size
                assert frames.shape[1:] == (24, 32, 3)
                outcomes["corrupt decoded"] += 1
    print(f"\nvideos: {outcomes}")


def test_cli_allow_outside_paths_is_an_explicit_per_command_opt_in(tmp_path, capsys):
    from hybridsim.cli import main

    (tmp_path / "meshes").mkdir()
    _box().export(tmp_path / "meshes" / "box.obj")
    (tmp_path / "scenes").mkdir()
    scene = _mesh_scene(tmp_path / "scenes", "../meshes/box.obj")
    out = tmp_path / "out.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet", "--frames", "1"]) == 2
    assert "scene file's folder" in capsys.readouterr().err
    assert main(["--allow-outside-paths", "render", str(scene), "-o", str(out), "--quiet", "--frames", "1"]) == 0
    assert out.exists()
    assert assets.ALLOW_OUTSIDE_ENV not in os.environ  # restored after the command
