"""Triangle-mesh renderer: layers of an analytic cube, shadows, finite-difference gradients,
tile binning against the dense reference, depth order, and rigid mesh flow."""

from __future__ import annotations

import math
import time

import pytest
import torch
import trimesh

from hybridsim.errors import AssetError
from hybridsim.render import Camera
from hybridsim.render import raster
from hybridsim.render.mesh import (box_mesh, capsule_mesh, mesh_flow, render_meshes, rotation_vector_to_quaternion,
                                   transform_meshes, trimesh_to_mesh)

D64 = torch.float64
RED = ((0.9, 0.2, 0.2),)


def _front_camera(width=64, height=48, **kw):
    args = dict(position=(0.0, -4.0, 0.5), look_at=(0.0, 0.0, 0.5), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                width=width, height=height)
    args.update(kw)
    return Camera(**args)


def _pose(position, rotvec=(0.0, 0.0, 0.0)):
    q = rotation_vector_to_quaternion(torch.as_tensor(rotvec, dtype=D64))
    return torch.cat([torch.as_tensor(position, dtype=D64), q])


def _cube_scene(poses, half=0.5):
    v, f = box_mesh((half, half, half))
    return transform_meshes([v] * poses.shape[0], [f] * poses.shape[0], poses)


# ----------------------------------------------------------------------------------- mesh helpers


def test_mesh_helpers_are_closed_and_outward():
    for v, f in (box_mesh((0.5, 0.3, 0.2)), capsule_mesh(0.3, 0.4, 12)):
        mesh = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert math.isclose(float(trimesh.Trimesh(*[x.numpy() for x in box_mesh((0.5, 0.3, 0.2))]).volume), 0.24)
    v, f = trimesh_to_mesh(trimesh.creation.icosphere(subdivisions=1))
    assert v.dtype == D64 and f.dtype == torch.long and f.shape == (80, 3)


def test_transform_meshes_places_by_pose():
    v, f = box_mesh((0.5, 0.5, 0.5))
    poses = torch.stack([_pose((1.0, 2.0, 3.0), (0.0, 0.0, math.pi / 2)), _pose((0.0, 0.0, 0.0))])
    verts, faces, owner = transform_meshes([v, v], [f, f], poses)
    assert verts.shape == (16, 3) and faces.shape == (24, 3) and owner.tolist() == [0] * 12 + [1] * 12
    assert int(faces[12:].min()) == 8
    expected = torch.stack([-v[:, 1], v[:, 0], v[:, 2]], dim=1) + torch.tensor([1.0, 2.0, 3.0], dtype=D64)
    assert torch.allclose(verts[:8], expected, atol=1e-12)


def test_bad_inputs_raise_asset_errors():
    cam = _front_camera(16, 12)
    v, f, o = _cube_scene(_pose((0.0, 0.0, 0.5))[None])
    with pytest.raises(AssetError):
        render_meshes(cam, v[:, :2], f, o, RED)
    with pytest.raises(AssetError):
        render_meshes(cam, v, f + 100, o, RED)
    with pytest.raises(AssetError):
        render_meshes(cam, v, f, o + 1, RED)
    with pytest.raises(AssetError):
        render_meshes(cam, v, f, o, RED, softness=0.0)
    with pytest.raises(AssetError):
        transform_meshes([v], [f], torch.zeros(2, 7, dtype=D64))


# ------------------------------------------------------------------------------------- cube layers


def test_cube_straight_ahead_layers_and_shadow():
    cam = _front_camera()
    pose = _pose((0.0, 0.0, 0.5))[None]
    v, f, o = _cube_scene(pose)
    grey = ((0.6, 0.6, 0.6), (0.6, 0.6, 0.6))  # uniform ground: any lit ground pixel is as bright
    layers = render_meshes(cam, v, f, o, RED, poses=pose, light_direction=(1.0, 0.0, -1.0), checker_colors=grey)
    seg, depth, normal = layers["segmentation"], layers["depth"], layers["normal"]
    for name, shape in (("rgb", (48, 64, 3)), ("albedo", (48, 64, 3)), ("alpha", (48, 64)), ("depth", (48, 64)),
                        ("normal", (48, 64, 3)), ("segmentation", (48, 64)), ("object_coordinates", (48, 64, 3))):
        assert tuple(layers[name].shape) == shape, name
    assert seg.dtype == torch.int32 and depth.dtype == D64

    # the front face y = -0.5 sits 3.5 m ahead: a square of half side 0.5 / 3.5 * f pixels
    half = 0.5 / 3.5 * cam.focal()
    cols = torch.arange(64, dtype=D64) + 0.5
    rows = torch.arange(48, dtype=D64) + 0.5
    dx = (cols[None, :] - 32.0).abs().expand(48, 64)
    dy = (rows[:, None] - 24.0).abs().expand(48, 64)
    inner = (dx < half - 1.0) & (dy < half - 1.0)
    outer = (dx > half + 1.0) | (dy > half + 1.0)
    assert inner.sum() > 50
    assert (seg[inner] == 1).all() and (seg[outer] != 1).all()
    assert torch.allclose(depth[inner], torch.full_like(depth[inner], 3.5), rtol=0, atol=1e-12)
    assert torch.allclose(normal[inner], torch.tensor([0.0, 0.0, -1.0], dtype=D64).expand_as(normal[inner]), atol=1e-12)
    # object coordinates of the front face: y = -0.5 in the cube frame
    assert torch.allclose(layers["object_coordinates"][inner][:, 1], torch.full((int(inner.sum()),), -0.5, dtype=D64))
    # soft silhouette (softness 0.5 px): opaque 4 px inside, sigmoid(d / 0.5) at the edge, 0 far out
    deep = (dx < half - 4.0) & (dy < half - 4.0)
    assert (layers["alpha"][deep] > 1.0 - 1e-3).all()
    edge_row = int(24.0 - half)  # pixel row next to the top edge, signed distance d [px] (+ inside)
    d = edge_row + 0.5 - (24.0 - half)
    assert math.isclose(float(layers["alpha"][edge_row, 32]), 1.0 / (1.0 + math.exp(-d / 0.5)), rel_tol=1e-9)
    assert (layers["alpha"][outer & (dx > half + 12)] < 1e-6).all()
    # ground below and beside the cube, sky-free lower half
    below = (rows[:, None] > 24.0 + half + 2.0).expand(48, 64)
    assert (seg[below] == 0).all() and torch.isfinite(depth[below]).all()
    assert torch.allclose(normal[below], torch.tensor([0.0, 0.0, 1.0], dtype=D64) @ cam.rotation(dtype=D64).T)

    # light travels towards +x: the shadow falls on +x of the cube, not on -x
    pts = torch.tensor([[1.0, -0.3, 0.0], [-1.0, -0.3, 0.0], [1.0, -1.5, 0.0]], dtype=D64)
    px = cam.project(pts)[0].floor().long()
    shadowed, mirrored, open_ground = (layers["rgb"][p[1], p[0]] for p in px)
    assert all(int(seg[p[1], p[0]]) == 0 for p in px)
    assert (shadowed < mirrored - 0.1).all()
    assert torch.allclose(mirrored, open_ground, atol=1e-6)
    no_shadow = render_meshes(cam, v, f, o, RED, light_direction=(1.0, 0.0, -1.0), checker_colors=grey, shadows=False)
    assert torch.allclose(no_shadow["rgb"][px[0, 1], px[0, 0]], mirrored, atol=1e-6)


def test_nearer_cube_wins_segmentation_in_any_order():
    cam = _front_camera(48, 36)
    near, far = _pose((0.3, -0.8, 0.5)), _pose((-0.2, 0.6, 0.6))
    results = []
    for order in ((near, far), (far, near)):
        poses = torch.stack(order)
        v, f, o = _cube_scene(poses, half=0.4)
        colors = ((0.9, 0.1, 0.1), (0.1, 0.1, 0.9)) if order[0] is near else ((0.1, 0.1, 0.9), (0.9, 0.1, 0.1))
        layers = render_meshes(cam, v, f, o, colors)
        near_id = 1 if order[0] is near else 2
        results.append((layers, near_id))
    (a, near_a), (b, near_b) = results
    seg_a = torch.where(a["segmentation"] == near_a, 1, torch.where(a["segmentation"] > 0, 2, 0))
    seg_b = torch.where(b["segmentation"] == near_b, 1, torch.where(b["segmentation"] > 0, 2, 0))
    assert torch.equal(seg_a, seg_b)
    assert (seg_a == 1).sum() > 20 and (seg_a == 2).sum() > 20
    # where the near cube's projection is, the far cube never shows
    centre = cam.project(near[None, :3])[0][0].long()
    assert int(seg_a[centre[1], centre[0]]) == 1
    assert torch.allclose(a["rgb"], b["rgb"], atol=1e-12) and torch.allclose(a["depth"], b["depth"])


# --------------------------------------------------------------------------------------- gradients


def _gradient_scene(params):
    """Loss of a rotated cube's image as a function of (tx, ty, tz, rot_z, red, intensity)."""
    cam = _front_camera(32, 24, position=(0.8, -3.5, 1.6))
    pose = torch.cat([params[:3], rotation_vector_to_quaternion(torch.stack([params[3] * 0 + 0.2, params[3] * 0 + 0.1, params[3]]))])[None]
    v, f, o = _cube_scene(pose, half=0.45)
    colors = torch.stack([params[4], params[4] * 0 + 0.3, params[4] * 0 + 0.2])[None]
    layers = render_meshes(cam, v, f, o, colors, light_intensity=params[5], softness=1.0, shadows=False)
    return layers


def _weights(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def test_image_gradients_match_finite_differences():
    params = torch.tensor([0.05, 0.0, 0.55, 0.35, 0.8, 0.7], dtype=D64)
    w_rgb, w_alpha = _weights((24, 32, 3), 0), _weights((24, 32), 1)

    def loss(p):
        layers = _gradient_scene(p)
        return (layers["rgb"] * w_rgb).sum() + (layers["alpha"] * w_alpha).sum()

    x = params.clone().requires_grad_(True)
    grad = torch.autograd.grad(loss(x), x)[0]
    eps = 1e-6
    for i in range(6):
        step = torch.zeros(6, dtype=D64)
        step[i] = eps
        fd = (loss(params + step) - loss(params - step)) / (2 * eps)
        assert abs(float(grad[i] - fd)) <= 1e-3 * abs(float(fd)) + 1e-7, (i, float(grad[i]), float(fd))
        assert abs(float(fd)) > 1e-3, i  # every parameter visibly changes the image


def test_silhouette_loss_moves_the_object():
    params = torch.tensor([0.05, 0.0, 0.55, 0.35, 0.8, 0.7], dtype=D64)
    target = _gradient_scene(params + torch.tensor([0.1, 0, 0, 0, 0, 0], dtype=D64))["alpha"].detach()

    def loss(p):
        return ((_gradient_scene(p)["alpha"] - target) ** 2).sum()

    x = params.clone().requires_grad_(True)
    grad = torch.autograd.grad(loss(x), x)[0]
    eps = 1e-6
    step = torch.tensor([eps, 0, 0, 0, 0, 0], dtype=D64)
    fd = (loss(params + step) - loss(params - step)) / (2 * eps)
    assert float(grad[0]) < -1e-2  # moving towards the target (+x) lowers the loss
    assert abs(float(grad[0] - fd)) <= 1e-3 * abs(float(fd))
    assert float(grad[4]) == 0.0 and float(grad[5]) == 0.0  # colour and light do not change coverage


# ----------------------------------------------------------------------------------------- binning


def _mixed_scene(dtype=D64, segments=10, copies=1):
    cv, cf = capsule_mesh(0.25, 0.3, segments, dtype=dtype)
    bv, bf = box_mesh((0.3, 0.2, 0.25), dtype=dtype)
    local_v, local_f, poses = [], [], []
    for c in range(copies):
        shift = 0.7 * (c % 4) - 1.0
        row = 0.8 * (c // 4)
        local_v += [bv, cv]
        local_f += [bf, cf]
        poses += [_pose((shift, row, 0.3), (0.1, 0.2, 0.5 + c)), _pose((shift + 0.35, row - 0.5, 0.6), (0.7, 0.0, 0.1 * c))]
    poses = torch.stack(poses).to(dtype)
    verts, faces, owner = transform_meshes(local_v, local_f, poses)
    colors = torch.rand(2 * copies, 3, generator=torch.Generator().manual_seed(3), dtype=dtype)
    return verts, faces, owner, colors, poses


def test_tiled_render_equals_dense_render():
    cam = Camera(position=(0.5, -3.0, 1.8), look_at=(0.0, 0.0, 0.4), up=(0.0, 0.0, 1.0), fovy_deg=45.0,
                 width=40, height=30)
    verts, faces, owner, colors, poses = _mixed_scene()
    verts = verts.detach().requires_grad_(True)
    colors = colors.requires_grad_(True)
    outs = [render_meshes(cam, verts, faces, owner, colors, poses=poses, softness=0.7, tiled=t) for t in (True, False)]
    for key in outs[0]:
        a, b = outs[0][key], outs[1][key]
        if a.is_floating_point():
            assert torch.allclose(torch.nan_to_num(a, posinf=0.0), torch.nan_to_num(b, posinf=0.0), rtol=0, atol=1e-9), key
        else:
            assert torch.equal(a, b), key
    assert (outs[0]["segmentation"] > 0).sum() > 50
    w = _weights((30, 40, 3), 5)
    grads = [torch.autograd.grad((o["rgb"] * w).sum() + o["alpha"].sum(), (verts, colors)) for o in outs]
    for g_tiled, g_dense in zip(*grads):
        assert g_tiled.abs().sum() > 0 and torch.allclose(g_tiled, g_dense, rtol=0, atol=1e-9)


def test_tile_plan_stays_within_the_chunk_budget_and_skips_far_faces():
    cam = Camera(position=(0.5, -4.0, 2.5), look_at=(0.0, 0.4, 0.3), up=(0.0, 0.0, 1.0), fovy_deg=50.0,
                 width=128, height=96)
    verts, faces, owner, colors, _ = _mixed_scene(torch.float32, segments=20, copies=5)
    assert faces.shape[0] >= 2000
    start = time.perf_counter()
    layers = render_meshes(cam, verts, faces, owner, colors, softness=0.5)
    elapsed = time.perf_counter() - start
    assert elapsed < 30.0  # the dense version would hold 12288 x 2000+ pairs per intermediate
    assert (layers["segmentation"] > 0).sum() > 500
    # the plan itself: per-chunk pairs within budget and far fewer pairs than pixels x faces
    pixels, _ = cam.project(verts)
    tri = pixels[faces]
    ids = torch.arange(faces.shape[0])
    reach = raster.CULL_SIGMAS * 0.5 + 1.0
    boxes = torch.stack([tri[..., 0].amin(1) - reach, tri[..., 0].amax(1) + reach,
                         tri[..., 1].amin(1) - reach, tri[..., 1].amax(1) + reach], dim=1)
    budget = raster.chunk_budget(4)
    plan = raster.plan_tiles(96, 128, boxes, ids, budget)
    pairs = [len(p) * len(f) for p, f in plan]
    assert max(pairs) <= budget
    assert sum(pairs) < 0.25 * 128 * 96 * faces.shape[0]


# -------------------------------------------------------------------------------------------- flow


def test_translating_cube_has_exact_orthographic_flow():
    cam = Camera(position=(0.0, -5.0, 2.5), look_at=(0.0, 0.0, 0.5), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                 width=48, height=40, projection="orthographic", ortho_height=3.0)
    p0 = _pose((0.0, 0.0, 0.5), (0.0, 0.0, 0.3))[None]
    p1 = _pose((0.12, 0.0, 0.56), (0.0, 0.0, 0.3))[None]
    frames = [render_meshes(cam, *_cube_scene(p, half=0.4), RED, poses=p) for p in (p0, p1)]
    out = mesh_flow(cam, cam, frames[0], frames[1], p0, p1)
    scale = cam.focal()
    cube = frames[0]["segmentation"] == 1
    visible = cube & ~out["occlusion_forward"]
    assert cube.sum() > 100 and visible.sum() > 0.7 * cube.sum()
    # orthographic: the screen shift is the move along the camera's right / down axes, scaled
    expected = (cam.rotation(dtype=D64) @ torch.tensor([0.12, 0.0, 0.06], dtype=D64))[:2] * scale
    assert torch.allclose(out["flow_forward"][cube], expected.expand(int(cube.sum()), 2), atol=1e-9)
    back = frames[1]["segmentation"] == 1
    assert torch.allclose(out["flow_backward"][back], (-expected).expand(int(back.sum()), 2), atol=1e-9)
    ground = frames[0]["segmentation"] == 0
    assert torch.allclose(out["flow_forward"][ground], torch.zeros(1, dtype=D64), atol=1e-9)
    # ground the cube moves onto becomes occluded
    assert (out["occlusion_forward"] & ground).sum() > 0


def test_rotating_cube_flow_warps_next_frame_onto_this_one():
    cam = _front_camera(64, 48, position=(0.6, -3.5, 1.4))
    p0 = _pose((0.0, 0.0, 0.5), (0.0, 0.0, 0.2))[None]
    p1 = _pose((0.05, 0.0, 0.5), (0.0, 0.0, 0.32))[None]
    kw = dict(light_direction=(-0.3, 0.5, -1.0), shadows=False)
    frames = [render_meshes(cam, *_cube_scene(p), RED, poses=p, **kw) for p in (p0, p1)]
    out = mesh_flow(cam, cam, frames[0], frames[1], p0, p1)
    valid = (frames[0]["segmentation"] == 1) & ~out["occlusion_forward"]
    assert valid.sum() > 200
    rows, cols = valid.nonzero().unbind(1)
    target = torch.stack([cols + 0.5, rows + 0.5], dim=1).to(D64) + out["flow_forward"][rows, cols]
    tc, tr = target[:, 0].floor().long(), target[:, 1].floor().long()
    # object coordinates: the same material point, up to the nearest-pixel rounding
    warped = frames[1]["object_coordinates"][tr, tc]
    error = (warped - frames[0]["object_coordinates"][rows, cols]).norm(dim=1)
    pixel_size = 3.8 / cam.focal()
    assert float(error.median()) < 0.7 * pixel_size and float(error.max()) < 3 * pixel_size
    # colour: shading changes with the rotation, but warped frames agree far better than unwarped
    warped_rgb = frames[1]["rgb"][tr, tc]
    err_warp = (warped_rgb - frames[0]["rgb"][rows, cols]).abs().mean()
    err_still = (frames[1]["rgb"][rows, cols] - frames[0]["rgb"][rows, cols]).abs().mean()
    assert float(err_warp) < 0.05 and float(err_warp) < 0.5 * float(err_still)


def test_shared_edges_leave_no_seams_inside_a_curved_mesh():
    cam = _front_camera(48, 40, position=(0.5, -3.0, 1.2))
    v, f = capsule_mesh(0.4, 0.3, 16)
    pose = _pose((0.0, 0.0, 0.7), (0.3, 0.1, 0.2))[None]
    layers = render_meshes(cam, *transform_meshes([v], [f], pose), RED, softness=0.5)
    body = (layers["segmentation"] == 1).double()[None, None]
    # pixels at least 4 px inside the silhouette: many triangle edges cross them, none may show
    deep = -torch.nn.functional.max_pool2d(-body, 9, stride=1, padding=4)[0, 0] > 0.5
    assert deep.sum() > 40
    assert (layers["alpha"][deep] > 1.0 - 1e-3).all()
    lit = layers["albedo"][deep]
    assert torch.allclose(lit, torch.tensor(RED[0], dtype=D64).expand_as(lit), atol=1e-3)
