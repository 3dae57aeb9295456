"""Camera geometry, analytic sphere rendering (layers and gradients) and video / frame I/O."""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from hybridsim.errors import AssetError
from hybridsim.render import Camera, read_frames, read_video, render_frames, render_spheres, to_uint8, write_layers, write_video
from hybridsim.render import spheres as spheres_mod
from hybridsim.render.video import read_frame_folder

D64 = torch.float64


def _cam(**kw):
    args = dict(position=(0.0, -5.0, 1.0), look_at=(0.0, 0.0, 1.0), up=(0.0, 0.0, 1.0), fovy_deg=40.0, width=41, height=31)
    args.update(kw)
    return Camera(**args)


# ----------------------------------------------------------------------------------------- camera


def test_axis_and_look_at_project_to_image_centre():
    cam = _cam(position=(1.0, -4.0, 2.5), look_at=(0.2, 0.5, 0.7), width=64, height=48)
    pos, at = torch.tensor(cam.position, dtype=D64), torch.tensor(cam.look_at, dtype=D64)
    forward = (at - pos) / (at - pos).norm()
    pts = torch.stack([at, pos + 0.5 * forward, pos + 20.0 * forward])
    xy, depth = cam.project(pts)
    assert torch.allclose(xy, torch.tensor([32.0, 24.0], dtype=D64).expand(3, 2), atol=1e-9)
    assert torch.allclose(depth, torch.tensor([(at - pos).norm(), 0.5, 20.0], dtype=D64), atol=1e-9)


def test_up_is_up_and_right_is_right_on_screen():
    cam = _cam()
    xy, _ = cam.project(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.5], [0.5, 0.0, 1.0]], dtype=D64))
    assert xy[1, 1] < xy[0, 1] - 1.0  # higher in the world = smaller row
    assert abs(xy[1, 0] - xy[0, 0]) < 1e-9
    assert xy[2, 0] > xy[0, 0] + 1.0  # +x is to the right when looking along +y with z up
    rot = cam.rotation(dtype=D64)
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=D64), atol=1e-12)
    assert torch.det(rot) == pytest.approx(1.0)


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
def test_intrinsics_extrinsics_and_rays_agree_with_project(projection):
    cam = _cam(position=(2.0, -3.0, 1.8), look_at=(0.0, 0.3, 0.4), width=50, height=30, projection=projection, ortho_height=3.0)
    pts = torch.rand(20, 3, dtype=D64, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    xy, depth = cam.project(pts)
    cam_pts = (cam.extrinsics(dtype=D64) @ torch.cat([pts, torch.ones(20, 1, dtype=D64)], 1).T).T[:, :3]
    assert torch.allclose(cam_pts[:, 2], depth, atol=1e-10)
    hom = cam_pts / cam_pts[:, 2:] if projection == "perspective" else torch.cat([cam_pts[:, :2], torch.ones(20, 1, dtype=D64)], 1)
    assert torch.allclose((cam.intrinsics(dtype=D64) @ hom.T).T[:, :2], xy, atol=1e-9)
    origins, dirs = cam.rays(dtype=D64)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(30, 50, dtype=D64))
    xy_ray, _ = cam.project(origins + 2.7 * dirs)  # every ray passes through its pixel centre
    cols, rows = torch.meshgrid(torch.arange(50, dtype=D64) + 0.5, torch.arange(30, dtype=D64) + 0.5, indexing="xy")
    assert torch.allclose(xy_ray, torch.stack([cols, rows], -1), atol=1e-9)


def test_orthographic_size_does_not_depend_on_distance():
    cam = _cam(projection="orthographic", ortho_height=2.0, width=40, height=40)
    near = torch.tensor([[0.0, -2.0, 0.5], [0.0, -2.0, 1.5]], dtype=D64)
    far = near + torch.tensor([0.0, 30.0, 0.0], dtype=D64)
    (xy_n, _), (xy_f, _) = cam.project(near), cam.project(far)
    assert (xy_n[1, 1] - xy_n[0, 1]).item() == pytest.approx(-20.0)  # 1 m = 40 px / 2 m
    assert torch.allclose(xy_n, xy_f)
    persp, _ = _cam(width=40, height=40).project(torch.cat([near, far]))
    assert abs(persp[1, 1] - persp[0, 1]) > 3 * abs(persp[3, 1] - persp[2, 1])  # control: perspective shrinks


def test_from_spec_and_bad_camera():
    class Spec:
        position, look_at, up = [0, -3, 1], [0, 0, 1], [0, 0, 1]
        fovy_deg, width, height, projection, ortho_height = 50, 20, 10, "orthographic", 4.0

    cam = Camera.from_spec(Spec())
    assert (cam.width, cam.height, cam.projection, cam.ortho_height) == (20, 10, "orthographic", 4.0)
    with pytest.raises(AssetError, match="parallel"):
        _cam(up=(0.0, 1.0, 0.0))
    with pytest.raises(AssetError, match="projection"):
        _cam(projection="fisheye")


# -------------------------------------------------------------------------------------- rendering


def _one_sphere(dtype=D64, **kw):
    cam = _cam()
    c = torch.tensor([[0.0, 0.0, 1.0]], dtype=dtype)
    return cam, render_spheres(cam, c, torch.tensor([0.5], dtype=dtype), torch.tensor([[0.8, 0.2, 0.1]], dtype=dtype), **kw)


def test_single_sphere_layers():
    cam, out = _one_sphere()
    seg, depth, normal = out["segmentation"], out["depth"], out["normal"]
    assert seg.dtype == torch.int32 and out["rgb"].dtype == D64 and out["rgb"].shape == (31, 41, 3)
    f = cam.focal()
    radius_px = f * 0.5 / math.sqrt(5.0**2 - 0.5**2)  # tangent cone of a sphere on the axis
    rows, cols = torch.meshgrid(torch.arange(31) + 0.5, torch.arange(41) + 0.5, indexing="ij")
    dist = torch.hypot(cols - 20.5, rows - 15.5)
    assert (seg[dist < radius_px - 1] == 1).all() and (seg[dist > radius_px + 1] != 1).all()
    assert (seg[(dist > radius_px - 1) & (dist < radius_px + 1)] == 1).any()
    assert depth[15, 20].item() == pytest.approx(4.5, abs=1e-4)
    assert torch.allclose(normal[15, 20], torch.tensor([0.0, 0.0, -1.0], dtype=D64), atol=1e-6)
    assert torch.allclose(normal[seg == 1].norm(dim=-1), torch.ones(int((seg == 1).sum()), dtype=D64))
    assert out["alpha"][15, 20] > 0.99 and out["alpha"][0, 0] < 1e-6
    # below the horizon: ground (finite depth, segment 0, normal = world up); above: sky
    assert seg[-1].eq(0).all() and torch.isfinite(depth[-1]).all()
    assert torch.allclose(normal[-1], cam.rotation(dtype=D64) @ torch.tensor([0.0, 0.0, 1.0], dtype=D64))
    assert torch.isinf(depth[0]).all() and normal[0].eq(0).all()
    assert torch.allclose(out["rgb"][0], torch.tensor([0.55, 0.7, 0.9], dtype=D64))


def test_checker_pattern_alternates_on_the_ground():
    cam = _cam(position=(0.3, -3.0, 2.0), look_at=(0.3, 0.0, 0.0), width=60, height=40)
    kw = dict(checker_size=0.5, checker_colors=((0.9, 0.9, 0.9), (0.2, 0.2, 0.2)), light_intensity=0.5, ambient=0.3)
    out = render_spheres(cam, torch.zeros(0, 3, dtype=D64), torch.zeros(0, dtype=D64), torch.zeros(0, 3, dtype=D64), **kw)
    origins, dirs = cam.rays(dtype=D64)
    hit = origins + (-origins[..., 2:] / dirs[..., 2:]) * dirs
    assert torch.allclose(hit[..., 2], torch.zeros(40, 60, dtype=D64), atol=1e-9)
    cells = torch.floor(hit[..., :2] / 0.5)
    frac = hit[..., :2] / 0.5 - cells
    # the checker is box-filtered over the pixel footprint: pixels whose footprint stays inside
    # one square get that square's exact colour
    t = (origins - hit).norm(dim=-1)
    footprint = t / cam.focal() / dirs[..., 2].abs() / 0.5
    clear = ((frac > footprint[..., None]) & (frac < 1 - footprint[..., None])).all(-1)
    parity = (cells.sum(-1).remainder(2) > 0.5)[clear]
    light = torch.tensor([-0.4, 0.3, -1.0], dtype=D64)
    shade = 0.3 + 0.5 * (-light[2] / light.norm())
    expected = torch.where(parity[:, None], torch.tensor([0.2] * 3, dtype=D64), torch.tensor([0.9] * 3, dtype=D64)) * shade
    assert parity.any() and (~parity).any()
    assert torch.allclose(out["rgb"][clear], expected, atol=1e-12)
    assert out["alpha"].eq(0).all() and out["segmentation"].eq(0).all()
    assert clear.sum() > 0.15 * clear.numel()


def test_far_checker_fades_to_its_mean_instead_of_aliasing():
    cam = _cam(position=(0.0, -3.0, 0.3), look_at=(0.0, 100.0, 0.0), width=64, height=48)
    kw = dict(checker_size=0.5, checker_colors=((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), light_intensity=0.0, ambient=1.0)
    out = render_spheres(cam, torch.zeros(0, 3, dtype=D64), torch.zeros(0, dtype=D64), torch.zeros(0, 3, dtype=D64), **kw)
    horizon_rows = out["rgb"][25:27, :, 0]  # just below the horizon: many squares per pixel
    assert (horizon_rows - 0.5).abs().max() < 0.1
    near_rows = out["rgb"][-3:, :, 0]  # close to the camera: crisp squares
    assert near_rows.max() > 0.95 and near_rows.min() < 0.05


def test_sphere_shading_is_lambert_plus_ambient():
    cam, out = _one_sphere(edge_softness=0.02, light_direction=(0.3, 0.8, -0.6), light_intensity=0.7, ambient=0.25)
    inside = out["alpha"] > 1.0 - 1e-12
    assert inside.sum() > 20
    world_n = out["normal"][inside] @ cam.rotation(dtype=D64)  # camera -> world
    light = torch.tensor([0.3, 0.8, -0.6], dtype=D64)
    lambert = torch.relu(-(world_n @ (light / light.norm())))
    assert lambert.max() > 0.5 and lambert.min() < lambert.max() - 0.1
    expected = torch.tensor([0.8, 0.2, 0.1], dtype=D64) * (0.25 + 0.7 * lambert)[:, None]
    assert torch.allclose(out["rgb"][inside], expected, atol=1e-6)


def test_sphere_sunk_into_ground_is_cut_by_it_in_hard_layers():
    cam = _cam(position=(0.0, -4.0, 1.5), look_at=(0.0, 0.0, 0.0))
    out = render_spheres(cam, torch.tensor([[0.0, 0.0, 0.0]], dtype=D64), torch.tensor([0.8], dtype=D64), torch.tensor([[0.5, 0.5, 0.5]], dtype=D64))
    origins, dirs = cam.rays(dtype=D64)
    point = origins + (out["depth"] / (dirs @ cam.rotation(dtype=D64)[2]))[..., None] * dirs
    sphere = out["segmentation"] == 1
    assert sphere.sum() > 20 and (point[sphere][:, 2] > -1e-9).all()
    oc = -origins  # ray-sphere intersection by hand: which rays would meet the sphere below the ground
    t = (oc * dirs).sum(-1)
    gap = 0.64 - ((oc - t[..., None] * dirs) ** 2).sum(-1)
    under = (gap > 0) & ((origins + (t - gap.clamp(min=0).sqrt())[..., None] * dirs)[..., 2] < -0.01)
    assert under.any() and (out["segmentation"][under] == 0).all()
    assert torch.allclose(point[under][:, 2], torch.zeros(int(under.sum()), dtype=D64), atol=1e-9)


@pytest.mark.parametrize("swap", [False, True])
def test_nearer_sphere_wins_regardless_of_input_order(swap):
    cam = _cam()
    centers = torch.tensor([[0.1, -1.0, 1.0], [0.0, 0.5, 1.1]], dtype=D64)  # sphere 0 nearer
    radii = torch.tensor([0.3, 0.6], dtype=D64)
    colors = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1]], dtype=D64)
    order = [1, 0] if swap else [0, 1]
    out = render_spheres(cam, centers[order], radii[order], colors[order])
    xy, _ = cam.project(centers[:1])
    j, i = int(xy[0, 0]), int(xy[0, 1])
    near_label = order.index(0) + 1
    assert out["segmentation"][i, j] == near_label
    rgb = out["rgb"][i, j]
    assert rgb[0] > 3 * rgb[1]  # red (near) over green (far)
    reference = render_spheres(cam, centers, radii, colors)
    assert torch.allclose(out["rgb"], reference["rgb"], atol=1e-12)
    assert torch.allclose(out["depth"], reference["depth"])


def test_finite_difference_gradients():
    cam = _cam(width=32, height=24, position=(0.0, -3.0, 1.3), look_at=(0.0, 0.0, 0.9))
    weights = torch.rand(24, 32, 3, dtype=D64, generator=torch.Generator().manual_seed(1))
    params = dict(
        center=torch.tensor([0.07, 0.11, 0.93], dtype=D64), radius=torch.tensor(0.42, dtype=D64),
        color=torch.tensor([0.7, 0.4, 0.2], dtype=D64), light=torch.tensor([0.1, 0.9, -0.5], dtype=D64),
        intensity=torch.tensor(0.6, dtype=D64), ambient=torch.tensor(0.3, dtype=D64),
    )

    def loss(p):
        out = render_spheres(cam, p["center"][None], p["radius"][None], p["color"][None], edge_softness=2.0,
                             light_direction=p["light"], light_intensity=p["intensity"], ambient=p["ambient"])
        return (out["rgb"] * weights).sum()

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss(leaves).backward()
    for name, value in params.items():
        flat = value.reshape(-1)
        for comp in range(flat.numel()):
            step = torch.zeros_like(flat)
            step[comp] = 1e-6
            plus = loss({**params, name: (flat + step).reshape(value.shape)})
            minus = loss({**params, name: (flat - step).reshape(value.shape)})
            numeric = ((plus - minus) / 2e-6).item()
            analytic = leaves[name].grad.reshape(-1)[comp].item()
            assert abs(numeric) > 1e-3, (name, comp)  # the check must not be vacuous
            assert abs(analytic - numeric) <= 1e-4 * abs(numeric), (name, comp, analytic, numeric)


def test_culling_and_chunking_match_brute_force(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    cam = _cam(width=48, height=36, position=(0.5, -4.0, 2.0), look_at=(0.0, 0.0, 0.5))
    centers = (torch.rand(40, 3, dtype=D64, generator=gen) - 0.5) * torch.tensor([3.0, 3.0, 1.0], dtype=D64) + torch.tensor([0.0, 0.0, 0.6], dtype=D64)
    centers[0] = torch.tensor([0.5, -3.5, 2.0], dtype=D64)  # crosses the camera plane
    centers[1] = torch.tensor([0.0, -6.0, 2.0], dtype=D64)  # behind the camera
    radii = 0.05 + 0.2 * torch.rand(40, dtype=D64, generator=gen)
    colors = torch.rand(40, 3, dtype=D64, generator=gen)

    def run():
        c, r = centers.clone().requires_grad_(), radii.clone().requires_grad_()
        out = render_spheres(cam, c, r, colors)
        (out["rgb"].sum() + out["alpha"].sum()).backward()
        return out, c.grad, r.grad

    culled = run()
    monkeypatch.setattr(spheres_mod, "_CHUNK_BYTES", 48 * 8 * 2000)  # tiny budget: many chunks, split tiles
    split = run()
    monkeypatch.setattr(spheres_mod, "_plan_chunks", lambda cam, c, reach, budget: [(torch.arange(48 * 36), torch.arange(len(c)))])
    brute = run()
    for other in (culled, split):
        for key in ("rgb", "alpha", "depth", "normal"):
            assert torch.allclose(other[0][key], brute[0][key], atol=1e-8), key
        assert torch.equal(other[0]["segmentation"], brute[0]["segmentation"])
        assert torch.allclose(other[1], brute[1], atol=1e-7) and torch.allclose(other[2], brute[2], atol=1e-7)
    assert (brute[0]["segmentation"] > 2).any() and brute[1].abs().sum() > 0


def test_hard_edges_and_hidden_spheres():
    cam = _cam(width=24, height=18)
    centers = torch.tensor([[0.0, 0.0, 1.0], [0.0, -5.0, 1.0], [0.0, -8.0, 1.0]], requires_grad=True)  # visible, around the eye, behind
    colors = torch.rand(3, 3, requires_grad=True)
    out = render_spheres(cam, centers, torch.tensor([0.6, 0.3, 0.5]), colors, edge_softness=0.0)
    assert set(out["alpha"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out["alpha"] > 0, out["segmentation"] == 1)
    out["rgb"].sum().backward()
    assert colors.grad[0].abs().sum() > 0 and colors.grad[1:].eq(0).all() and centers.grad[1:].eq(0).all()


def test_float32_frames_and_uint8():
    cam = _cam(width=20, height=16)
    centers = torch.tensor([[[0.0, 0.0, 1.0]], [[0.3, 0.0, 1.0]]])
    out = render_frames(cam, centers, torch.tensor([0.4]), torch.tensor([[0.2, 0.3, 0.9]]))
    assert out["rgb"].shape == (2, 16, 20, 3) and out["rgb"].dtype == torch.float32
    assert out["segmentation"].shape == (2, 16, 20)
    single = render_spheres(cam, centers[1], torch.tensor([0.4]), torch.tensor([[0.2, 0.3, 0.9]]))
    assert torch.allclose(out["rgb"][1], single["rgb"])
    assert not torch.equal(out["segmentation"][0], out["segmentation"][1])
    img = to_uint8(out["rgb"])
    assert img.dtype == np.uint8 and img.shape == (2, 16, 20, 3)
    assert np.array_equal(to_uint8(np.array([[-0.5, 0.5, 2.0]])), np.array([[0, 128, 255]], dtype=np.uint8))


# ------------------------------------------------------------------------------------------ video


def _smooth_frames(count, height, width):
    rows, cols = np.mgrid[0:height, 0:width]
    frames = [np.stack([60 + 120 * cols / width + 4 * k, 40 + 150 * rows / height, np.full_like(rows, 100.0 + 10 * k)], -1) for k in range(count)]
    return np.round(np.stack(frames)).astype(np.uint8)


@pytest.mark.parametrize("size", [(33, 47), (48, 64)])
def test_video_roundtrip_keeps_exact_size(tmp_path, size):
    frames = _smooth_frames(5, *size)
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=12)
    back, fps = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert fps == pytest.approx(12.0)
    assert np.abs(back.astype(int) - frames).max() < 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary left behind
    again, _ = read_frames(path)
    assert np.array_equal(again, back)


def test_truncated_garbage_and_missing_videos_raise_asset_error(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, _smooth_frames(5, 32, 32).astype(np.float32) / 255.0, fps=10)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for bad in (cut, junk, tmp_path / "missing.mp4"):
        with pytest.raises(AssetError) as info:
            read_video(bad)
        assert info.value.file == str(bad) and bad.name in str(info.value)


def test_frame_folder(tmp_path):
    frames = _smooth_frames(3, 10, 12)
    for k, name in enumerate(["f_2.png", "f_10.png", "f_1.png"]):  # natural order: 1, 2, 10
        iio.imwrite(tmp_path / name, frames[[1, 2, 0][k]])
    (tmp_path / "notes.txt").write_text("ignored")
    back, fps = read_frames(tmp_path)
    assert fps is None and np.array_equal(back, frames)
    iio.imwrite(tmp_path / "f_3.png", frames[0][:, :11])
    with pytest.raises(AssetError) as info:
        read_frame_folder(tmp_path)
    assert "f_3.png" in str(info.value)
    with pytest.raises(AssetError):
        read_frame_folder(tmp_path / "nope")


def test_write_layers_roundtrip(tmp_path):
    layers = {"depth": torch.tensor([[1.5, float("inf")]], dtype=D64), "segmentation": np.array([[0, 3]], dtype=np.int32)}
    write_layers(tmp_path / "layers.npz", layers)
    with np.load(tmp_path / "layers.npz") as data:
        assert np.array_equal(data["depth"], layers["depth"].numpy()) and data["segmentation"].dtype == np.int32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layers.npz"]
