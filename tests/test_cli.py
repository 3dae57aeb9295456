"""The command line end to end: render writes a readable mp4 of the right size and length,
bad scenes give one-line errors and a non-zero exit, info and gradcheck work."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hybridsim.cli import main

ROOT = Path(__file__).resolve().parent.parent

SMALL_SCENE = """
name = "small"
backend = "{backend}"
[time]
fps = 24
frames = 6
substeps = 4
[camera]
position = [0.0, -4.0, 1.0]
look_at = [0.0, 0.0, 0.5]
width = 63
height = 47
[[objects]]
type = "sphere"
position = [0.0, 0.0, 0.8]
radius = 0.3
restitution = {{ value = 0.7, learn = true, range = [0.1, 1.0] }}
velocity = {{ value = [0.3, 0.0, 0.0], learn = true }}
"""


@pytest.mark.parametrize("backend", ["warp", "taichi"])
def test_render_writes_video_layers_and_states(tmp_path, capsys, backend):
    from hybridsim.render import read_video

    scene = tmp_path / "small.toml"
    scene.write_text(SMALL_SCENE.format(backend=backend))
    out = tmp_path / "out" / "small.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (7, 47, 63, 3)  # frame 0 (initial state) + 6 frames; odd size kept exactly
    assert fps == 24
    layers = np.load(out.with_suffix(".layers.npz"))
    assert layers["depth"].shape == (7, 47, 63)
    assert layers["segmentation"].shape == (7, 47, 63) and layers["segmentation"].max() == 1
    assert layers["flow_forward"].shape == (7, 47, 63, 2) and layers["occlusion_backward"].shape == (7, 47, 63)
    assert np.isfinite(layers["flow_forward"]).all() and layers["intrinsics"].shape == (7, 3, 3)
    assert read_video(out.with_suffix(".flow.mp4"))[0].shape == (7, 47, 63, 3)
    states = np.load(out.with_suffix(".states.npz"))
    assert states["positions"].shape == (7, 1, 1, 3)
    assert str(out) in capsys.readouterr().out

    assert main(["metrics", str(out), "--scene", str(scene)]) == 0
    import json

    metrics = json.loads(capsys.readouterr().out)
    assert metrics["frames"] == 7 and metrics["warping_error"] < 0.02 and metrics["penetration"] < 1e-6
    assert metrics["energy_gain"] < 1e-4  # float32 states: rounding only


def test_render_frames_override(tmp_path):
    scene = tmp_path / "small.toml"
    scene.write_text(SMALL_SCENE.format(backend="warp"))
    out = tmp_path / "short.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet", "--frames", "2"]) == 0
    from hybridsim.render import read_video

    assert read_video(out)[0].shape == (3, 47, 63, 3)


def test_render_writes_flo_files_equal_to_the_flow_layers(tmp_path):
    import numpy as np

    from hybridsim.render.flow import read_flo

    scene = tmp_path / "small.toml"
    scene.write_text(SMALL_SCENE.format(backend="warp"))
    out = tmp_path / "flo.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet", "--frames", "3", "--flo"]) == 0
    with np.load(out.with_suffix(".layers.npz")) as layers:
        forward, backward = layers["flow_forward"], layers["flow_backward"]
    folder, count = out.with_suffix(".flo"), len(forward)
    assert sorted(p.name for p in folder.iterdir()) == [f"{k}_{t:04d}.flo" for k in ("backward", "forward")
                                                       for t in range(count)]
    for t in range(count):
        assert np.array_equal(read_flo(folder / f"forward_{t:04d}.flo"), forward[t].astype(np.float32))
        assert np.array_equal(read_flo(folder / f"backward_{t:04d}.flo"), backward[t].astype(np.float32))
    assert np.abs(forward[0]).max() > 0.1  # the spheres move


@pytest.mark.parametrize("mutation,field", [
    (("radius = 0.3", "radius = -0.3"), "objects[0].radius"),
    (("radius = 0.3", "raduis = 0.3"), "objects[0].raduis"),
    (("radius = 0.3", 'radius = "big"'), "objects[0].radius"),
    (("width = 63", "width = 63\nwidth = 64"), None),  # malformed TOML (duplicate key)
    (('backend = "warp"', 'backend = "bullet"'), "backend"),
])
def test_bad_scene_gives_one_line_error_and_nonzero_exit(tmp_path, mutation, field):
    scene = tmp_path / "bad.toml"
    scene.write_text(SMALL_SCENE.format(backend="warp").replace(*mutation))
    result = subprocess.run([sys.executable, "-m", "hybridsim.cli", "render", str(scene), "-o", str(tmp_path / "x.mp4")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad.toml" in lines[0] and "Traceback" not in result.stderr
    if field:
        assert field in lines[0]
    assert not (tmp_path / "x.mp4").exists()


def test_missing_camera_is_named(tmp_path):
    text = SMALL_SCENE.format(backend="warp")
    start = text.index("[camera]")
    end = text.index("[[objects]]")
    scene = tmp_path / "nocam.toml"
    scene.write_text(text[:start] + text[end:])
    result = subprocess.run([sys.executable, "-m", "hybridsim.cli", "render", str(scene)], capture_output=True, text=True)
    assert result.returncode == 2 and "camera" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.perf_counter(); import hybridsim, hybridsim.cli; "
            "p = hybridsim.cli.build_parser(); "
            "print(time.perf_counter() - t, [m for m in ('torch', 'warp', 'taichi', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert float(out[0]) < 0.5
    assert out[1].strip() == "[]"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hybridsim.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 1.0


def test_info_lists_versions_and_caches(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("hybridsim", "torch", "warp", "taichi", "kernel cache", "offline cache", "devices: cpu"):
        assert word in out


def test_gradcheck_command_passes_on_a_shipped_scene(tmp_path, capsys):
    scene = tmp_path / "small.toml"
    scene.write_text(SMALL_SCENE.format(backend="warp"))
    assert main(["gradcheck", str(scene), "--frames", "6"]) == 0
    out = capsys.readouterr().out
    assert "objects[0].restitution" in out and "PASS" in out


def test_quickstart_example_runs_and_reaches_restitution(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--small", "-o", str(tmp_path / "q.mp4")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if "restitution" in l)
    assert abs(float(line.split("=")[-1])) > 0  # the bounce happens inside the clip
    assert (tmp_path / "q.mp4").stat().st_size > 0


def test_bench_reports_json_records_with_ratios(capsys, tmp_path):
    import json

    assert main(["bench", "bounce_warp_vs_numpy", "--quick", "--json", "-o", str(tmp_path / "b.json")]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("case", "ours", "reference", "ratio", "threads", "unit"):
        assert key in record
    assert record["case"] == "bounce_warp_vs_numpy" and record["ratio"] == pytest.approx(record["ours"] / record["reference"])
    assert json.loads((tmp_path / "b.json").read_text())[0]["case"] == "bounce_warp_vs_numpy"


def test_public_api_names_resolve_to_objects_not_modules():
    import types

    import hybridsim

    for name in hybridsim.__all__:
        value = getattr(hybridsim, name)
        assert not isinstance(value, types.ModuleType), name
