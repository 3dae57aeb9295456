"""Camera model: OpenCV import/export, camera files, principal point, and camera paths (keyframes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hybridsim.errors import AssetError, SceneError
from hybridsim.render.camera import Camera, rotation_to_rvec, rvec_to_rotation
from hybridsim.render.camera_io import (camera_moves, camera_toml, read_camera_file, scene_cameras, write_camera_json,
                                        write_opencv_yaml)
from hybridsim.scene import parse_scene

D64 = torch.float64


def _random_camera(seed: int, **kw) -> Camera:
    rng = np.random.default_rng(seed)
    args = dict(position=rng.uniform(-4, 4, 3), look_at=rng.uniform(-1, 1, 3), up=(0.0, 0.0, 1.0),
                fovy_deg=float(rng.uniform(20, 90)), width=int(rng.integers(16, 200)), height=int(rng.integers(16, 200)))
    args.update(kw)
    return Camera(**args)


@pytest.mark.parametrize("seed", range(5))
def test_opencv_round_trip_reproduces_k_and_extrinsics(seed):
    point = (13.25, 9.5) if seed % 2 else None
    cam = _random_camera(seed, principal_point=point)
    cv = cam.to_opencv()
    back = Camera.from_opencv(cv["K"], cv["extrinsics"], cam.width, cam.height)
    assert np.allclose(back.intrinsics(dtype=D64).numpy(), cv["K"], atol=1e-9)
    assert np.allclose(back.extrinsics(dtype=D64).numpy(), cv["extrinsics"], atol=1e-12)
    assert back.principal_point == point
    pts = torch.rand(30, 3, dtype=D64, generator=torch.Generator().manual_seed(seed)) * 4 - 2
    assert torch.allclose(back.project(pts)[0], cam.project(pts)[0], atol=1e-8)
    # OpenCV's own convention: pixel = K (R x + t) / z
    cam_pts = pts.numpy() @ cv["R"].T + cv["t"]
    hom = cam_pts @ cv["K"].T
    assert np.allclose(hom[:, :2] / hom[:, 2:], cam.project(pts)[0].numpy(), atol=1e-8)


def test_rodrigues_round_trip_including_near_pi():
    rng = np.random.default_rng(3)
    for rvec in [*rng.normal(size=(20, 3)), np.array([math.pi - 1e-7, 0.0, 0.0]), np.zeros(3), np.array([0, 1e-10, 0])]:
        rot = rvec_to_rotation(rvec)
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.allclose(rvec_to_rotation(rotation_to_rvec(rot)), rot, atol=1e-6)


def test_principal_point_moves_the_image_and_rays_still_hit_pixel_centres():
    cam = Camera(position=(2, -3, 1.8), look_at=(0, 0.3, 0.4), up=(0, 0, 1), fovy_deg=50, width=50, height=30,
                 principal_point=(20.0, 17.5))
    origins, dirs = cam.rays(dtype=D64)
    xy, _ = cam.project(origins + 2.3 * dirs)
    cols, rows = torch.meshgrid(torch.arange(50, dtype=D64) + 0.5, torch.arange(30, dtype=D64) + 0.5, indexing="xy")
    assert torch.allclose(xy, torch.stack([cols, rows], -1), atol=1e-9)
    centred = cam.replace(principal_point=None)
    shift = cam.project(torch.tensor([[0.3, 0.2, 0.5]], dtype=D64))[0] - centred.project(torch.tensor([[0.3, 0.2, 0.5]], dtype=D64))[0]
    assert torch.allclose(shift, torch.tensor([[20.0 - 25.0, 17.5 - 15.0]], dtype=D64), atol=1e-9)


@pytest.mark.parametrize("k, message", [
    ([[100, 0, 32], [0, 140, 24], [0, 0, 1]], "non-square pixels"),
    ([[100, 3, 32], [0, 100, 24], [0, 0, 1]], "K must be"),
    ([[-100, 0, 32], [0, -100, 24], [0, 0, 1]], "positive"),
])
def test_from_opencv_refuses_what_the_model_cannot_represent(k, message):
    with pytest.raises(AssetError, match=message):
        Camera.from_opencv(k, np.eye(4), 64, 48)


def test_from_opencv_refuses_a_reflection():
    ext = np.eye(4)
    ext[0, 0] = -1.0
    with pytest.raises(AssetError, match="proper rotation"):
        Camera.from_opencv([[100, 0, 32], [0, 100, 24], [0, 0, 1]], ext, 64, 48)


def test_opencv_yaml_and_camera_json_round_trip(tmp_path):
    cam = _random_camera(7)
    write_opencv_yaml(tmp_path / "cam.yml", cam, fps=24)
    back, fields = read_camera_file(tmp_path / "cam.yml")
    assert np.allclose(back.extrinsics(dtype=D64), cam.extrinsics(dtype=D64), atol=1e-12)
    assert back.fovy_deg == pytest.approx(cam.fovy_deg) and fields["fps"] == 24
    write_camera_json(tmp_path / "cam.json", [cam, cam], 24)
    again, fields = read_camera_file(tmp_path / "cam.json")
    assert again == cam and "moving" not in fields
    data = json.loads((tmp_path / "cam.json").read_text())
    assert len(data["frames"]) == 2 and np.allclose(data["frames"][1]["K"], cam.intrinsics(dtype=D64).numpy())
    ortho = cam.replace(projection="orthographic", ortho_height=3.0)
    write_camera_json(tmp_path / "ortho.json", [ortho], 24)
    assert read_camera_file(tmp_path / "ortho.json")[0] == ortho


def test_reads_an_opencv_filestorage_file_as_opencv_writes_it(tmp_path):
    (tmp_path / "calib.yml").write_text(
        "%YAML:1.0\n---\nimage_width: 64\nimage_height: 48\n"
        "camera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n"
        "   data: [ 60., 0., 32., 0., 60., 24., 0., 0., 1. ]\n"
        "distortion_coefficients: !!opencv-matrix\n   rows: 1\n   cols: 5\n   dt: d\n   data: [ 0., 0., 0., 0.,\n       0. ]\n"
        "rvec: !!opencv-matrix\n   rows: 3\n   cols: 1\n   dt: d\n   data: [ 1.5707963267948966, 0., 0. ]\n"
        "tvec: !!opencv-matrix\n   rows: 3\n   cols: 1\n   dt: d\n   data: [ 0., 0., 5. ]\n")
    cam, _ = read_camera_file(tmp_path / "calib.yml")
    # R = rot_x(90 deg): camera z (forward) is world +y... position = -R^T t
    assert np.allclose(cam.position, (0.0, -5.0, 0.0), atol=1e-12)
    assert np.allclose(np.subtract(cam.look_at, cam.position), (0.0, 1.0, 0.0), atol=1e-12)
    assert np.allclose(cam.up, (0.0, 0.0, 1.0), atol=1e-12)
    assert cam.focal() == pytest.approx(60.0)
    toml = camera_toml(cam)
    assert "[camera]" in toml and "width = 64" in toml


@pytest.mark.parametrize("text, message", [
    ("%YAML:1.0\n---\ncamera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n   data: [ 1., 2. ]\n", "holds 2"),
    ("%YAML:1.0\n---\nimage_width: 64\nimage_height: 48\ncamera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n"
     "   dt: d\n   data: [ 60., 0., 32., 0., 60., 24., 0., 0., 1. ]\n", "needs extrinsics"),
    ("%YAML:1.0\n---\n- just a list\n", "not OpenCV FileStorage"),
    ('{"K": [[60, 0, 32], [0, 60, 24], [0, 0, 1]], "R": [[1,0,0],[0,1,0],[0,0,1]], "t": [0,0,1], '
     '"dist": [0.1, 0, 0, 0, 0], "width": 64, "height": 48}', "distortion"),
    ('{"position": [0, 0, 1], "look_at": [0, 0, 1], "width": 8, "height": 8}', "coincide"),
    ('{"position": [0, 0], "width": 8}', "position must be a list of 3"),
    ('{"positon": [0, 0, 1]}', "unknown camera key"),
    ("[1, 2]", "must be an object"),
])
def test_bad_camera_files_name_the_file_and_problem(tmp_path, text, message):
    path = tmp_path / ("bad.yml" if text.startswith("%YAML") else "bad.json")
    path.write_text(text)
    with pytest.raises(AssetError, match=message) as info:
        read_camera_file(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------- camera paths

_SCENE = """
name = "orbit"
[time]
fps = 10
frames = 20
[camera]
position = [0.0, -4.0, 1.0]
look_at = [0.0, 0.0, 0.5]
width = 48
height = 36
interpolation = "{interp}"
[[camera.keyframes]]
time = 0.5
position = [0.0, -4.0, 1.0]
[[camera.keyframes]]
time = 1.5
position = [2.0, -4.0, 2.0]
look_at = [-1.0, 0.0, 0.5]
fovy_deg = 50.0
[[objects]]
type = "sphere"
radius = 0.25
position = [0.0, 0.0, 0.25]
"""


@pytest.mark.parametrize("interp", ["linear", "smooth"])
def test_keyframes_are_hit_exactly_and_held_outside(interp):
    spec = parse_scene(_SCENE.replace("{interp}", interp))
    assert camera_moves(spec.camera)
    cams = scene_cameras(spec.camera, 21, spec.time.fps)
    assert all(c.position == cams[0].position for c in cams[:6])  # held before the first keyframe (t <= 0.5 s)
    assert np.allclose(cams[15].position, (2.0, -4.0, 2.0)) and cams[15].fovy_deg == pytest.approx(50.0)
    assert all(np.allclose(c.position, cams[15].position) for c in cams[15:])
    mid = cams[10]  # t = 1.0 s, halfway: both interpolations give the midpoint with two keyframes
    assert np.allclose(mid.position, (1.0, -4.0, 1.5)) and mid.fovy_deg == pytest.approx(45.0)
    if interp == "smooth":  # eases in: the first step after a keyframe is shorter than the linear one
        assert cams[6].position[0] < 0.2 * 0.5


def test_keyframe_errors_name_the_field():
    bad = _SCENE.replace("{interp}", "linear").replace("time = 1.5", "time = 0.25")
    with pytest.raises(SceneError, match=r"camera\.keyframes\[1\]\.time.*increase"):
        parse_scene(bad)
    bad = _SCENE.replace("{interp}", "linear").replace("position = [2.0, -4.0, 2.0]", "position = [-1.0, 0.0, 0.5]")
    with pytest.raises(SceneError, match=r"camera\.keyframes\[1\]\.look_at"):
        parse_scene(bad)
    with pytest.raises(SceneError, match="interpolation"):
        parse_scene(_SCENE.replace("{interp}", "cubic"))


def test_moving_camera_render_exports_per_frame_cameras_and_exact_flow(tmp_path):
    """A static sphere seen by a moving camera: where the flow carries the sphere's pixels is
    where the sphere is in the next frame (mask centroids), and the layers hold per-frame K and [R|t]."""
    from hybridsim.data.sample import simulate_and_render
    from hybridsim.sim.world import World

    spec = parse_scene(_SCENE.replace("{interp}", "linear").replace('name = "orbit"', 'name = "orbit"\ngravity = [0, 0, 0]'))
    rendering = simulate_and_render(World(spec, precision="float64"), frames=20)
    layers = rendering.layers
    assert layers["intrinsics"].shape == (21, 3, 3) and layers["extrinsics"].shape == (21, 4, 4)
    assert not np.allclose(layers["extrinsics"][0], layers["extrinsics"][20])
    assert np.allclose(layers["extrinsics"][10], rendering.cameras[10].extrinsics(dtype=D64).numpy())
    seg, flow = layers["segmentation"], layers["flow_forward"]
    rows, cols = np.mgrid[0:36, 0:48] + 0.5
    for t in (6, 9, 12):
        mask = seg[t] == 1
        moved = np.stack([cols[mask] + flow[t][mask][:, 0], rows[mask] + flow[t][mask][:, 1]], -1).mean(0)
        nxt = seg[t + 1] == 1
        target = np.array([cols[nxt].mean(), rows[nxt].mean()])
        assert np.abs(moved - target).max() < 0.35, (t, moved, target)
        assert np.abs(flow[t][mask]).max() > 0.3  # the camera really moved


def test_cli_render_writes_camera_json_that_fit_reads(tmp_path):
    from hybridsim.cli import main
    from hybridsim.fit.target import load_camera_json

    scene = tmp_path / "orbit.toml"
    scene.write_text(_SCENE.replace("{interp}", "smooth"))
    out = tmp_path / "orbit.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet", "--frames", "16"]) == 0
    data = json.loads(out.with_suffix(".camera.json").read_text())
    assert len(data["frames"]) == 17 and data["fps"] == 10
    assert data["frames"][16]["position"] != data["frames"][0]["position"]
    with pytest.raises(AssetError, match="static camera"):
        load_camera_json(out.with_suffix(".camera.json"))
    assert main(["camera", str(scene), "--export", str(tmp_path / "f5.yml"), "--frame", "15"]) == 0
    cam, _ = read_camera_file(tmp_path / "f5.yml")
    assert np.allclose(cam.position, data["frames"][15]["position"], atol=1e-9)
    static = tmp_path / "static.json"
    write_camera_json(static, [cam], 10)
    fields = load_camera_json(static)
    assert fields["width"] == 48 and fields["fps"] == 10


def test_rigid_render_follows_the_camera_path(tmp_path):
    from hybridsim.render.rigid import render_rigid_layers
    from hybridsim.sim.rigid import rigid_rollout
    from hybridsim.sim.world import World

    text = _SCENE.replace("{interp}", "linear").replace('type = "sphere"\nradius = 0.25',
                                                          'type = "box"\nhalf_extents = [0.25, 0.25, 0.25]')
    spec = parse_scene(text.replace("frames = 20", "frames = 15"))
    world = World(spec)
    with torch.no_grad():
        trajectory = rigid_rollout(world, frames=15)
    _, layers = render_rigid_layers(world, trajectory)
    cams = scene_cameras(spec.camera, 16, spec.time.fps)
    assert layers["extrinsics"].shape == (16, 4, 4)
    assert np.allclose(layers["extrinsics"][12], cams[12].extrinsics(dtype=D64).numpy())
    seg, flow = layers["segmentation"], layers["flow_forward"]
    rows, cols = np.mgrid[0:36, 0:48] + 0.5
    mask, nxt = (seg[10] == 1) & ~layers["occlusion_forward"][10], seg[11] == 1
    moved = np.stack([cols[mask] + flow[10][mask][:, 0], rows[mask] + flow[10][mask][:, 1]], -1)
    # every visible box pixel lands on the box in the next frame
    hit = nxt[np.clip(moved[:, 1].astype(int), 0, 35), np.clip(moved[:, 0].astype(int), 0, 47)]
    assert hit.mean() > 0.97 and np.abs(flow[10][mask]).max() > 0.3


def test_distribution_orbit_sweep_writes_a_circular_camera_path():
    from hybridsim.scene.distributions import parse_distribution

    text = """
[time]
fps = 10
frames = 30
[camera]
look_at = [0.0, 0.0, 0.5]
[camera.orbit]
azimuth_deg = 0.0
elevation_deg = 20.0
distance = 5.0
sweep_deg = { uniform = [80.0, 90.0] }
"""
    spec = parse_distribution(text).sample(0, 1)
    keys = spec.camera.keyframes
    assert len(keys) >= 9 and keys[0].time == 0.0 and keys[-1].time == pytest.approx(3.0)
    radii = [np.linalg.norm(np.subtract(k.position, (0.0, 0.0, 0.5))) for k in keys]
    assert np.allclose(radii, 5.0)
    cams = scene_cameras(spec.camera, 31, 10)
    swept = math.degrees(math.atan2(cams[30].position[1], cams[30].position[0]))
    assert 80.0 <= swept <= 90.0
    assert all(abs(np.linalg.norm(np.subtract(c.position, (0, 0, 0.5))) - 5.0) < 0.02 for c in cams)
    with pytest.raises(SceneError, match="not both"):
        parse_distribution(text + "[[camera.keyframes]]\ntime = 1.0\n")
