"""Mesh renderer: textures (checker / stripes / image, filtered by the pixel footprint), the
required warping test of a textured albedo layer with the exact flow, spot lights (shading, shadows
from the light's position, gradients), object-object shadows, and the scene fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hybridsim.errors import AssetError, SceneError
from hybridsim.render import Camera
from hybridsim.render.mesh import (box_mesh, capsule_mesh, mesh_flow, render_meshes,
                                   rotation_vector_to_quaternion, transform_meshes)
from hybridsim.render.textures import CheckerTexture, ImageTexture, StripesTexture, Texture
from hybridsim.scene import parse_scene

D64 = torch.float64
WHITE = ((1.0, 1.0, 1.0),)
GREY = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # a uniform ground


def _pose(position, rotvec=(0.0, 0.0, 0.0)):
    q = rotation_vector_to_quaternion(torch.as_tensor(rotvec, dtype=D64))
    return torch.cat([torch.as_tensor(position, dtype=D64), q])


def _smooth_image(n=32):
    g = (torch.arange(n, dtype=D64) + 0.5) / n
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(2 * math.pi * xx) * torch.cos(2 * math.pi * yy),
                        0.5 + 0.35 * torch.cos(2 * math.pi * (xx + yy)),
                        0.5 + 0.3 * torch.sin(2 * math.pi * yy)], -1)


def _weights(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


# ------------------------------------------------------------------------------------- textures


def test_checker_texture_sits_in_the_object_frame_and_is_tinted_by_the_colour():
    cam = Camera(position=(0.0, -5.0, 0.5), look_at=(0.0, 0.0, 0.5), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                 width=64, height=64,
                 projection="orthographic", ortho_height=1.2)
    v, f = box_mesh((0.4, 0.4, 0.4))
    colors = ((0.9, 0.8, 0.1), (0.1, 0.2, 0.7))
    texture = CheckerTexture(0.2, colors)
    tint = torch.tensor([[0.5, 1.0, 1.0]], dtype=D64)
    light = (0.0, 1.0, -1.0)  # the front face (normal -y) gets ambient + 0.8 / sqrt(2)
    for rot in ((0.0, 0.0, 0.0), (0.0, 0.4, 0.0)):  # turned about the view axis: the pattern turns along
        pose = _pose((0.0, 0.0, 0.5), rot)[None]
        layers = render_meshes(cam, *transform_meshes([v], [f], pose), tint, poses=pose, textures=[texture],
                               light_direction=light, shadows=False, softness=0.1)
        coords = layers["object_coordinates"]
        cell = coords / 0.2
        # pixel centres at least 1.5 px (0.028 m) from a cell edge and from the silhouette
        margin = 1.5 * 1.2 / 64 / 0.2
        frac = cell[..., [0, 2]] - torch.floor(cell[..., [0, 2]])
        clear = ((frac > margin) & (frac < 1 - margin)).all(-1) & (layers["alpha"] > 1 - 1e-9)
        clear &= (coords[..., [0, 2]].abs() < 0.4 - 0.03).all(-1)
        assert clear.sum() > 600
        odd = (torch.floor(cell[..., 0]) + torch.floor(cell[..., 2]) + math.floor(-0.4 / 0.2 + 1e-6)) % 2 != 0
        expected = torch.where(odd[..., None], torch.tensor(colors[1], dtype=D64), torch.tensor(colors[0], dtype=D64))
        expected = expected * tint[0]
        assert torch.allclose(layers["albedo"][clear], expected[clear], atol=1e-9)
        shade = 0.35 + 0.8 / math.sqrt(2.0)
        assert torch.allclose(layers["rgb"][clear], (expected[clear] * shade).clamp(max=1.0), atol=1e-9)
        assert (odd & clear).sum() > 300 and (~odd & clear).sum() > 300


def test_stripes_and_image_textures():
    cam = Camera(position=(0.0, -5.0, 0.5), look_at=(0.0, 0.0, 0.5), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                 width=48, height=48,
                 projection="orthographic", ortho_height=1.2)
    v, f = box_mesh((0.4, 0.4, 0.4))
    pose = _pose((0.0, 0.0, 0.5))[None]
    scene = (cam, *transform_meshes([v], [f], pose), WHITE)
    stripes = render_meshes(*scene, poses=pose, textures=[StripesTexture(0.1, direction=(0.0, 0.0, 1.0))])
    # horizontal stripes: constant along rows (inside the face), alternating down the face
    rows = stripes["albedo"][12:36, 18:30, 0]
    assert torch.allclose(rows, rows[:, :1].expand_as(rows), atol=1e-6)
    assert float(rows.max() - rows.min()) > 0.6
    # an image spanning the front face once (scale 0.8 m): the face shows the image upright
    image = torch.zeros(4, 4, 3, dtype=D64)
    image[:2, :, 0] = 1.0  # top half red
    image[2:, :, 2] = 1.0  # bottom half blue
    shown = render_meshes(*scene, poses=pose, textures=[ImageTexture(image, 0.8)], softness=0.3)
    # the front face spans x, z in [-0.4, 0.4]: image s from x, t from z (wrapping at 0)
    top = cam.project(torch.tensor([[0.0, -0.4, 0.5 + 0.2]], dtype=D64))[0][0].long()
    bottom = cam.project(torch.tensor([[0.0, -0.4, 0.5 - 0.2]], dtype=D64))[0][0].long()
    # t = z / 0.8 wraps: z in (0, 0.4) is the lower half of the image (blue), z in (-0.4, 0) the upper
    assert float(shown["albedo"][top[1], top[0], 2]) > 0.9
    assert float(shown["albedo"][bottom[1], bottom[0], 0]) > 0.9
    with pytest.raises(AssetError):
        ImageTexture(torch.zeros(4, 4), 1.0)
    with pytest.raises(AssetError):
        render_meshes(*scene, textures=[None, None])


class _PointSampled(CheckerTexture):
    """The same checker without the footprint filter (what aliases)."""

    def evaluate(self, coords, d_dx, d_dy, normals):
        return super().evaluate(coords, d_dx * 0.0, d_dy * 0.0, normals)


def test_checker_is_filtered_by_the_pixel_footprint():
    """A fine checker on a plate seen at a grazing angle: the filtered render agrees with a 4x
    supersampled one far better than point sampling does (which aliases into noise)."""
    v, f = box_mesh((1.5, 3.0, 0.01))
    pose = _pose((0.0, 2.0, 0.01))[None]
    scene = transform_meshes([v], [f], pose)

    def render(texture, scale):
        cam = Camera(position=(0.0, -1.5, 0.5), look_at=(0.0, 2.0, 0.0), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                     width=48 * scale, height=32 * scale)
        out = render_meshes(cam, *scene, WHITE, poses=pose, textures=[texture], shadows=False, checker_colors=GREY)
        albedo = out["albedo"].permute(2, 0, 1)[None]
        return torch.nn.functional.avg_pool2d(albedo, scale)[0] if scale > 1 else albedo[0]

    reference = render(CheckerTexture(0.05), 4)
    filtered, point = render(CheckerTexture(0.05), 1), render(_PointSampled(0.05), 1)
    far = slice(2, 14)  # rows showing the plate far away, where cells are smaller than pixels
    err_filtered = float((filtered[:, far] - reference[:, far]).abs().mean())
    err_point = float((point[:, far] - reference[:, far]).abs().mean())
    assert err_filtered < 0.06 and err_filtered < 0.4 * err_point, (err_filtered, err_point)


# --------------------------------------------------------------------------------- the warping test


class _SolidWaves(Texture):
    """A smooth solid texture: sinusoids of the object coordinates with a 2.4 m period. Warping
    interpolates bilinearly between pixels, which is exact to well under one grey level only for
    content this band-limited (the test box shows about a third of a period per face, ~0.3 grey
    levels of interpolation error); being a function of 3D position it is also continuous across
    the box's edges (an image's box projection is not, and a checker's cell edges are one-pixel
    ramps that no bilinear warp of a sub-pixel motion reproduces)."""

    def evaluate(self, coords, d_dx, d_dy, normals):
        k = 2.0 * math.pi / 2.4
        x, y, z = coords.unbind(-1)
        return torch.stack([0.5 + 0.4 * torch.sin(k * x + 0.5) * torch.cos(k * y),
                            0.5 + 0.4 * torch.cos(k * (y + z)),
                            0.5 + 0.4 * torch.sin(k * (z - x))], -1)


def _bilinear(image, x, y):
    """Sample (H, W, C) at continuous pixel coordinates (centres at integers); also the 4 taps."""
    height, width = image.shape[:2]
    x0, y0 = x.floor().long(), y.floor().long()
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    inside = (x0 >= 0) & (y0 >= 0) & (x0 < width - 1) & (y0 < height - 1)
    xc, yc = x0.clamp(0, width - 2), y0.clamp(0, height - 2)
    taps = [(yc, xc), (yc, xc + 1), (yc + 1, xc), (yc + 1, xc + 1)]
    value = (image[yc, xc] * (1 - fx) * (1 - fy) + image[yc, xc + 1] * fx * (1 - fy)
             + image[yc + 1, xc] * (1 - fx) * fy + image[yc + 1, xc + 1] * fx * fy)
    return value, inside, taps


def _near_silhouette(seg, reach=2):
    s = seg.double()[None, None]
    k = 2 * reach + 1
    return (torch.nn.functional.max_pool2d(s, k, 1, reach) != -torch.nn.functional.max_pool2d(-s, k, 1, reach))[0, 0]


def test_warping_textured_albedo_with_exact_flow_reproduces_next_frame():
    """Issue 6: warping frame t of the unlit albedo layer with the exact flow reproduces frame t+1
    within one grey level on non-occluded pixels, for a translating and rotating textured box
    (perspective camera); the occlusion masks (plus the 2 px silhouette band, where soft edges
    mix surfaces and the bilinear stencil straddles them) mark every pixel where it does not."""
    width, height = 128, 96
    cam = Camera(position=(0.9, -2.0, 1.4), look_at=(0.0, 0.0, 0.45), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                 width=width, height=height)
    v, f = box_mesh((0.4, 0.4, 0.4))
    p0 = _pose((0.0, 0.0, 0.45), (0.05, 0.0, 0.3))[None]
    p1 = _pose((0.05, 0.03, 0.47), (0.1, 0.0, 0.4))[None]  # moved 6 cm and turned 0.11 rad
    kw = dict(textures=[_SolidWaves()], texture_coords=v, softness=0.25, checker_colors=GREY)
    frames = [render_meshes(cam, *transform_meshes([v], [f], p), WHITE, poses=p, **kw) for p in (p0, p1)]
    flow = mesh_flow(cam, cam, frames[0], frames[1], p0, p1)
    grey_t, grey_t1 = frames[0]["albedo"] * 255.0, frames[1]["albedo"] * 255.0
    rows, cols = torch.meshgrid(torch.arange(height, dtype=D64), torch.arange(width, dtype=D64), indexing="ij")

    def warp(extra=0.0):  # backward warping: frame t+1 pixel q takes frame t at q + flow_backward(q)
        return _bilinear(grey_t, cols + flow["flow_backward"][..., 0] + extra, rows + flow["flow_backward"][..., 1])

    warped, inside, taps = warp()
    error = (warped - grey_t1).abs().amax(-1)
    seg_t, seg_t1 = frames[0]["segmentation"], frames[1]["segmentation"]
    band_t, band_t1 = _near_silhouette(seg_t), _near_silhouette(seg_t1)
    stencil_ok = torch.stack([(seg_t[r, c] == seg_t1) & ~band_t[r, c] for r, c in taps]).all(0)
    checked = ~flow["occlusion_backward"] & inside & ~band_t1 & stencil_ok
    on_box = checked & (seg_t1 == 1)
    assert on_box.sum() > 2000  # most of the box (~2700 px) is checked
    assert float(error[checked].max()) < 1.0, float(error[checked].max())
    assert float(error[on_box].mean()) < 0.2
    # the rest: every pixel warping gets wrong by more than a grey level is occluded or on the band
    bad = error > 1.0
    assert not (bad & ~flow["occlusion_backward"] & ~band_t1 & stencil_ok & inside).any()
    assert (bad & flow["occlusion_backward"]).sum() > 100  # ground the box uncovered / covered
    # the test has teeth: half a pixel of flow error is visible
    shifted = (warp(0.5)[0] - grey_t1).abs().amax(-1)
    assert float(shifted[on_box].mean()) > 1.0


# ------------------------------------------------------------------------------------ spot light


def _spot_reference(points, normals, position, axis, cone_deg, falloff):
    """Independent numpy spot factor: Lambert towards the light times the smoothstep cone edge."""
    to_light = position - points
    u = to_light / np.linalg.norm(to_light, axis=-1, keepdims=True)
    axis = axis / np.linalg.norm(axis)
    cos_axis = -(u @ axis)
    outer, inner = math.cos(math.radians(cone_deg)), math.cos(math.radians(cone_deg * (1 - falloff)))
    x = np.clip((cos_axis - outer) / (inner - outer), 0.0, 1.0)
    return x * x * (3 - 2 * x) * np.maximum((u * normals).sum(-1), 0.0)


def test_spot_light_shades_ground_and_objects_alike():
    cam = Camera(position=(-0.2, -1.8, 1.9), look_at=(-0.2, 0.2, 0.0), up=(0.0, 0.0, 1.0), fovy_deg=50.0,
                 width=96, height=72)
    v, f = box_mesh((0.4, 0.3, 0.05))  # a plate whose top (z = 0.1) is lit like the ground
    pose = _pose((-0.5, 0.2, 0.05))[None]
    spot = dict(light_type="spot", light_position=(0.2, 0.0, 1.5), light_direction=(-0.1, 0.1, -1.0),
                cone_deg=35.0, falloff=0.4, light_intensity=0.7, ambient=0.2)
    layers = render_meshes(cam, *transform_meshes([v], [f], pose), ((0.5, 0.5, 0.5),), poses=pose,
                           checker_colors=GREY, shadows=False, softness=0.2, **spot)
    depth = layers["depth"]
    from hybridsim.render.flow import surface_points

    points = surface_points(cam, depth).numpy()
    up = np.array([0.0, 0.0, 1.0])
    factor = _spot_reference(points, up, np.array(spot["light_position"]), np.array(spot["light_direction"]), 35.0, 0.4)
    expected = 0.5 * (0.2 + 0.7 * factor)
    seg = layers["segmentation"]
    interior = ~_near_silhouette(seg, 3) & torch.isfinite(depth)
    n_world = layers["normal"] @ cam.rotation(dtype=D64)  # camera space -> world
    top = (interior & (seg == 1) & (n_world[..., 2] > 0.99)).numpy()  # the plate's top
    ground = (interior & (seg == 0)).numpy()
    rgb = layers["rgb"][..., 0].numpy()
    for region in (top, ground):
        assert region.sum() > 100
        assert np.allclose(rgb[region], expected[region], atol=1e-6)
        # the lit core and the smooth edge of the cone fall on both
        assert (factor[region] > 0.8).any() and ((factor[region] > 0.05) & (factor[region] < 0.5)).any()
    assert (factor[ground] == 0).any()  # outside the cone: ambient only


def test_spot_shadow_is_cast_from_the_light_position():
    cam = Camera(position=(0.0, -3.0, 3.0), look_at=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                 width=96, height=96)
    v, f = box_mesh((0.2, 0.2, 0.2))
    pose = _pose((0.0, 0.0, 0.5))[None]  # floating: z in [0.3, 0.7]
    kw = dict(light_type="spot", light_position=(0.0, 0.0, 2.0), light_direction=(0.0, 0.0, -1.0), cone_deg=60.0,
              falloff=0.1, checker_colors=GREY)
    layers = render_meshes(cam, *transform_meshes([v], [f], pose), WHITE, **kw)
    # from the light, the top face's corners (0.2, z = 0.7) land at 0.2 * 2 / 1.3 = 0.31 m on the ground
    inside, outside = [0.01, -0.27, 0.0], [0.01, -0.36, 0.0]
    px = cam.project(torch.tensor([inside, outside, [0.2, -0.27, 0.0]], dtype=D64))[0].floor().long()
    values = [float(layers["rgb"][p[1], p[0], 0]) for p in px]
    assert all(int(layers["segmentation"][p[1], p[0]]) == 0 and float(layers["alpha"][p[1], p[0]]) < 1e-6 for p in px)
    assert values[0] == pytest.approx(0.5 * 0.35, abs=1e-6)  # ambient only: shadowed
    assert values[2] == pytest.approx(values[0], abs=1e-6)
    assert values[1] > 0.5 * 0.35 + 0.3
    # a directional light straight down would leave the first point lit (shadow half width 0.2 m)
    straight = render_meshes(cam, *transform_meshes([v], [f], pose), WHITE, light_direction=(0.0, 0.0, -1.0),
                             checker_colors=GREY)
    assert float(straight["rgb"][px[0, 1], px[0, 0], 0]) > 0.5 * 0.35 + 0.3


def test_texture_and_spot_light_gradients_match_finite_differences():
    cam = Camera(position=(0.8, -3.5, 1.6), look_at=(0.0, 0.0, 0.5), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                 width=32, height=24)
    texture = ImageTexture(_smooth_image(16), 0.6)
    v0, f0 = box_mesh((0.45, 0.45, 0.45))
    weights = _weights((24, 32, 3), 0)

    def loss(p):
        pose = torch.cat([p[:3], rotation_vector_to_quaternion(torch.stack([p[3] * 0 + 0.2, p[3] * 0 + 0.1, p[3]]))])[None]
        colors = torch.stack([p[4], p[4] * 0 + 0.9, p[4] * 0 + 0.8])[None]
        layers = render_meshes(cam, *transform_meshes([v0], [f0], pose), colors, textures=[texture], texture_coords=v0,
                               softness=1.0, shadows=False, light_type="spot",
                               light_position=torch.stack([p[6], p[6] * 0 - 1.0, p[6] * 0 + 2.5]),
                               light_direction=(-0.3, 0.4, -1.0), light_intensity=p[5], cone_deg=p[7], falloff=0.3)
        return ((layers["rgb"] + layers["albedo"]) * weights).sum()

    params = torch.tensor([0.05, 0.0, 0.55, 0.35, 0.8, 0.7, 0.6, 25.0], dtype=D64)
    x = params.clone().requires_grad_(True)
    grad = torch.autograd.grad(loss(x), x)[0]
    eps = 1e-6
    for i in range(len(params)):
        step = torch.zeros_like(params)
        step[i] = eps
        fd = (loss(params + step) - loss(params - step)) / (2 * eps)
        assert abs(float(fd)) > 1e-2, i  # pose, tint, intensity, light position and cone all show
        assert abs(float(grad[i] - fd)) <= 1e-5 * abs(float(fd)) + 1e-7, (i, float(grad[i]), float(fd))


def _mixed_scene():
    bv, bf = box_mesh((0.3, 0.2, 0.25))
    cv, cf = capsule_mesh(0.25, 0.3, 10)
    poses = torch.stack([_pose((0.0, 0.0, 0.3), (0.1, 0.2, 0.5)), _pose((0.35, -0.2, 0.9), (0.7, 0.0, 0.1))])
    verts, faces, owner = transform_meshes([bv, cv], [bf, cf], poses)
    return verts, faces, owner, poses


def test_tiled_equals_dense_with_textures_spot_light_and_object_shadows():
    cam = Camera(position=(0.5, -3.0, 1.8), look_at=(0.0, 0.0, 0.4), up=(0.0, 0.0, 1.0), fovy_deg=45.0,
                 width=40, height=30)
    verts, faces, owner, poses = _mixed_scene()
    verts = verts.detach().requires_grad_(True)
    colors = torch.tensor([[0.9, 0.5, 0.3], [0.4, 0.8, 0.9]], dtype=D64, requires_grad=True)
    intensity = torch.tensor(0.8, dtype=D64, requires_grad=True)
    kw = dict(poses=poses, softness=0.7, textures=[CheckerTexture(0.1), ImageTexture(_smooth_image(8), 0.5)],
              light_type="spot", light_position=(0.6, -0.8, 2.5), light_direction=(-0.2, 0.3, -1.0), cone_deg=40.0,
              light_intensity=intensity, object_shadows=True, coverage_weights=torch.tensor([1.0, 0.0]))
    outs = [render_meshes(cam, verts, faces, owner, colors, tiled=t, **kw) for t in (True, False)]
    for key in outs[0]:
        a, b = outs[0][key], outs[1][key]
        if a.is_floating_point():
            assert torch.allclose(torch.nan_to_num(a, posinf=0.0), torch.nan_to_num(b, posinf=0.0), rtol=0, atol=1e-9), key
        else:
            assert torch.equal(a, b), key
    w = _weights((30, 40, 3), 5)
    grads = [torch.autograd.grad((o["rgb"] * w).sum() + (o["albedo"] * w).sum() + o["alpha"].sum(),
                                 (verts, colors, intensity)) for o in outs]
    for g_tiled, g_dense in zip(*grads):
        assert g_tiled.abs().sum() > 0 and torch.allclose(g_tiled, g_dense, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------- object-object shadows


def test_objects_shadow_each_other_only_when_asked():
    cam = Camera(position=(0.0, -3.0, 2.4), look_at=(0.0, 0.0, 0.2), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                 width=64, height=48)
    plate_v, plate_f = box_mesh((0.8, 0.8, 0.1))
    cube_v, cube_f = box_mesh((0.15, 0.15, 0.15))
    poses = torch.stack([_pose((0.0, 0.0, 0.1)), _pose((0.0, 0.0, 0.8))])  # a cube floating over a plate
    scene = (cam, *transform_meshes([plate_v, cube_v], [plate_f, cube_f], poses), ((0.6, 0.6, 0.6), (0.9, 0.2, 0.2)))
    light = (0.3, 0.0, -1.0)
    on = render_meshes(*scene, light_direction=light, object_shadows=True)
    off = render_meshes(*scene, light_direction=light, object_shadows=False)
    # the cube's shadow on the plate top (z = 0.2): its centre moved by 0.6 * 0.3 along +x
    under = cam.project(torch.tensor([[0.18, 0.0, 0.2], [-0.5, 0.0, 0.2]], dtype=D64))[0].floor().long()
    (cx, cy), (fx, fy) = under.tolist()
    assert int(on["segmentation"][cy, cx]) == 1 and int(on["segmentation"][fy, fx]) == 1
    assert float(on["rgb"][cy, cx, 0]) == pytest.approx(0.6 * 0.35, abs=1e-4)  # ambient only
    assert float(off["rgb"][cy, cx, 0]) > 0.6 * 0.35 + 0.3
    assert torch.allclose(on["rgb"][fy, fx], off["rgb"][fy, fx], atol=1e-12)  # lit plate elsewhere
    # the cube itself and every other layer are unchanged
    cube = (on["segmentation"] == 2) & ~_near_silhouette(on["segmentation"], 2)
    assert torch.allclose(on["rgb"][cube], off["rgb"][cube], atol=1e-12)
    for key in ("albedo", "alpha", "depth", "segmentation"):
        assert torch.equal(on[key], off[key]), key
    # a spot light above: the shadow is cast from its position
    spot = dict(light_type="spot", light_position=(0.0, 0.0, 2.0), light_direction=(0.0, 0.0, -1.0), cone_deg=60.0)
    lit = render_meshes(*scene, object_shadows=True, **spot)
    # from (0, 0, 2) the cube's top corners (0.15, z = 0.95) reach 0.15 * 1.8 / 1.05 = 0.26 m at z = 0.2
    edge = cam.project(torch.tensor([[0.22, -0.05, 0.2], [0.32, -0.05, 0.2]], dtype=D64))[0].floor().long()
    assert float(lit["rgb"][edge[0, 1], edge[0, 0], 0]) == pytest.approx(0.6 * 0.35, abs=1e-4)
    assert float(lit["rgb"][edge[1, 1], edge[1, 0], 0]) > 0.6 * 0.35 + 0.2


def test_a_single_object_does_not_shadow_itself():
    cam = Camera(position=(0.6, -3.0, 1.6), look_at=(0.0, 0.0, 0.4), up=(0.0, 0.0, 1.0), fovy_deg=45.0,
                 width=48, height=36)
    v, f = capsule_mesh(0.3, 0.3, 12)
    pose = _pose((0.0, 0.0, 0.6), (0.8, 0.2, 0.0))[None]
    scene = (cam, *transform_meshes([v], [f], pose), ((0.7, 0.4, 0.2),))
    on = render_meshes(*scene, object_shadows=True)
    off = render_meshes(*scene, object_shadows=False)
    assert torch.allclose(on["rgb"], off["rgb"], atol=1e-12)


# --------------------------------------------------------------------------------------- scenes

SCENE = """
name = "textured"
precision = "float64"
device = "cpu"
[time]
fps = 30
frames = 1
[camera]
position = [0.0, -2.0, 1.0]
look_at = [0.0, 0.0, 0.2]
width = 64
height = 48
{light}
[[objects]]
type = "box"
position = [-0.25, 0.0, 0.2]
half_extents = [0.2, 0.2, 0.2]
texture = {{ kind = "checker", size = 0.1, colors = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]] }}
[[objects]]
type = "static_box"
position = [0.3, 0.0, 0.2]
half_extents = [0.2, 0.2, 0.2]
color = [1.0, 0.5, 1.0]
texture = {{ image = "{image}", scale = 0.4 }}
"""


def _write_image(path, rgb):
    from PIL import Image

    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)


def test_scene_textures_and_spot_light_render(tmp_path):
    from hybridsim.render.rigid import render_rigid, render_rigid_layers
    from hybridsim.sim.rigid import rigid_rollout
    from hybridsim.sim.world import World

    _write_image(tmp_path / "green.png", np.full((8, 8, 3), (0, 200, 0)))
    light = '[light]\ntype = "spot"\nposition = [0.0, -0.5, 2.0]\ndirection = [0.0, 0.2, -1.0]\ncone_deg = 45.0\n' \
            'intensity = { value = 0.8, learn = true }'
    path = tmp_path / "scene.toml"
    path.write_text(SCENE.format(light=light, image="green.png"))
    world = World(parse_scene(path.read_text(), source=str(path)))
    spec = world.spec
    assert spec.objects[0].color == (1.0, 1.0, 1.0)  # a textured object's colour defaults to white
    assert spec.objects[1].texture.kind == "image" and spec.light.type == "spot"
    params = world.parameters()
    trajectory = rigid_rollout(world, params)
    layers = render_rigid(world, trajectory, params, frames=slice(0, 1))
    albedo, seg = layers["albedo"][0], layers["segmentation"][0]
    deep = ~_near_silhouette(seg, 4)
    checker = albedo[(seg == 1) & deep]
    assert ((checker - torch.tensor([1.0, 1.0, 0.0], dtype=D64)).abs().amax(1) < 1e-6).any()
    assert ((checker - torch.tensor([0.0, 0.0, 1.0], dtype=D64)).abs().amax(1) < 1e-6).any()
    image = albedo[(seg == 2) & deep]  # green image tinted by the colour [1, 0.5, 1]
    assert len(image) > 20
    assert torch.allclose(image, torch.tensor([0.0, 0.5 * 200 / 255, 0.0], dtype=D64).expand_as(image), atol=1e-3)
    loss = layers["rgb"].sum()
    (grad,) = torch.autograd.grad(loss, [params["light.intensity"]])
    assert float(grad) > 1.0  # the learnable spot intensity reaches the image
    rgb, stacked = render_rigid_layers(world, trajectory)
    assert rgb.shape == (2, 48, 64, 3) and stacked["segmentation"].max() == 2


def test_scene_texture_and_light_errors(tmp_path):
    from hybridsim.render.rigid import rigid_textures
    from hybridsim.sim.world import World

    path = tmp_path / "scene.toml"

    def load(light="", image="wood.png", text=None):
        path.write_text(text if text is not None else SCENE.format(light=light, image=image))
        return parse_scene(path.read_text(), source=str(path))

    with pytest.raises(AssetError, match="wood.png"):  # the file is missing
        rigid_textures(World(load()))
    (tmp_path / "wood.png").write_bytes(b"not an image")
    with pytest.raises(AssetError, match="wood.png"):
        rigid_textures(World(load()))
    with pytest.raises(SceneError, match="scene file's folder"):
        load(image="../outside.png")
    with pytest.raises(SceneError, match="position"):
        load(light='[light]\ntype = "spot"')
    with pytest.raises(SceneError, match="no position"):
        load(light="[light]\nposition = [0.0, 0.0, 2.0]")
    with pytest.raises(SceneError, match="cone_deg"):
        load(light='[light]\ntype = "spot"\nposition = [0.0, 0.0, 2.0]\ncone_deg = 95.0')
    learned = SCENE.format(light="", image="wood.png").replace("size = 0.1,", "size = { value = 0.1, learn = true },")
    with pytest.raises(SceneError, match="textures are not differentiable"):
        load(text=learned)
    bad_kind = SCENE.format(light="", image="wood.png").replace('kind = "checker"', 'kind = "checkers"')
    with pytest.raises(SceneError, match="did you mean 'checker'"):
        load(text=bad_kind)
    spheres = ('name = "s"\n[camera]\nposition = [0.0, -3.0, 1.0]\nlook_at = [0.0, 0.0, 0.0]\n'
               '[light]\ntype = "spot"\nposition = [0.0, 0.0, 2.0]\n'
               '[[objects]]\ntype = "sphere"\nposition = [0.0, 0.0, 0.5]\nradius = 0.2\n')
    assert load(text=spheres).light.type == "spot"  # the sphere renderer draws spot lights too
    with pytest.raises(SceneError, match="rigid-body and sphere scenes only"):
        load(text=spheres.split("[[objects]]")[0])  # nothing for the light to shine on
