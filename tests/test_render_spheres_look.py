"""Spot lights and textures on sphere scenes (hybridsim.render.spheres): shading against an
independent formula, cone cut-off, textures that move with the sphere, finite-difference gradients,
and sphere-only scene files with `type = "spot"` and `texture = {...}`."""

import math

import numpy as np
import pytest
import torch

from hybridsim.render.camera import Camera
from hybridsim.render.flow import surface_points
from hybridsim.render.spheres import render_spheres

D64 = torch.float64
GREY = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
SPOT = dict(light_type="spot", light_position=(0.3, -0.2, 1.6), light_direction=(-0.2, 0.25, -1.0), cone_deg=30.0,
            falloff=0.4, light_intensity=0.7, ambient=0.2)


def _spot_reference(points, normals, position, axis, cone_deg, falloff):
    """Independent numpy spot factor: Lambert towards the light times the smoothstep cone edge."""
    to_light = position - points
    u = to_light / np.linalg.norm(to_light, axis=-1, keepdims=True)
    axis = axis / np.linalg.norm(axis)
    cos_axis = -(u @ axis)
    outer, inner = math.cos(math.radians(cone_deg)), math.cos(math.radians(cone_deg * (1 - falloff)))
    x = np.clip((cos_axis - outer) / (inner - outer), 0.0, 1.0)
    return x * x * (3 - 2 * x) * np.maximum((u * normals).sum(-1), 0.0)


def _camera(width=80, height=60):
    return Camera(position=(0.0, -2.2, 1.6), look_at=(0.0, 0.1, 0.2), up=(0.0, 0.0, 1.0), fovy_deg=50.0,
                  width=width, height=height)


def test_spot_light_shades_spheres_and_ground_by_the_formula():
    cam = _camera()
    centers = torch.tensor([[0.0, 0.1, 0.3], [-1.3, 1.0, 0.25]], dtype=D64)  # inside / outside the cone
    radii = torch.tensor([0.3, 0.25], dtype=D64)
    colors = torch.tensor([[0.8, 0.8, 0.8], [0.6, 0.6, 0.6]], dtype=D64)
    layers = render_spheres(cam, centers, radii, colors, checker_colors=GREY, edge_softness=0.0, **SPOT)
    seg, depth = layers["segmentation"], layers["depth"]
    points = surface_points(cam, depth).numpy()
    normals = (layers["normal"] @ cam.rotation(dtype=D64)).numpy()  # camera space -> world
    factor = _spot_reference(points, normals, np.array(SPOT["light_position"]), np.array(SPOT["light_direction"]),
                             SPOT["cone_deg"], SPOT["falloff"])
    albedo = np.where((seg == 1).numpy(), 0.8, np.where((seg == 2).numpy(), 0.6, 0.5))
    expected = albedo * (SPOT["ambient"] + SPOT["light_intensity"] * factor)
    # compare away from silhouettes (where hard layers and the blended colour may differ)
    interior = torch.ones_like(seg, dtype=torch.bool)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1)):
        interior &= torch.roll(seg, (dr, dc), (0, 1)) == seg
    interior = (interior & torch.isfinite(depth)).numpy()
    rgb = layers["rgb"][..., 0].numpy()
    for region in (interior & (seg == 1).numpy(), interior & (seg == 0).numpy()):
        assert region.sum() > 100
        assert np.allclose(rgb[region], expected[region], atol=1e-6)
        assert (factor[region] > 0.5).any()
    far_sphere = interior & (seg == 2).numpy()
    assert far_sphere.sum() > 20
    assert np.allclose(rgb[far_sphere], 0.6 * SPOT["ambient"], atol=1e-9)  # outside the cone: ambient only
    assert ((factor[interior & (seg == 0).numpy()] > 0.05) & (factor[interior & (seg == 0).numpy()] < 0.5)).any()


def test_directional_light_is_unchanged_by_the_spot_code():
    cam = _camera(32, 24)
    centers, radii = torch.tensor([[0.0, 0.1, 0.3]], dtype=D64), torch.tensor([0.3], dtype=D64)
    colors = torch.tensor([[0.8, 0.3, 0.2]], dtype=D64)
    plain = render_spheres(cam, centers, radii, colors)
    named = render_spheres(cam, centers, radii, colors, light_type="directional")
    assert torch.equal(plain["rgb"], named["rgb"])
    with pytest.raises(Exception, match="light_position"):
        render_spheres(cam, centers, radii, colors, light_type="spot")


def test_spot_light_gradients_match_finite_differences():
    cam = _camera(10, 8)
    colors = torch.tensor([[0.8, 0.6, 0.4]], dtype=D64)

    def image(center, position, cone):
        out = render_spheres(cam, center, torch.tensor([0.35], dtype=D64), colors, checker_colors=GREY,
                             light_type="spot", light_position=position, light_direction=(-0.2, 0.25, -1.0),
                             cone_deg=cone, falloff=0.5, light_intensity=0.7, ambient=0.2, albedo=True)
        return out["rgb"], out["alpha"], out["albedo"]

    center = torch.tensor([[0.05, 0.1, 0.3]], dtype=D64, requires_grad=True)
    position = torch.tensor([0.3, -0.2, 1.6], dtype=D64, requires_grad=True)
    cone = torch.tensor(35.0, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(image, (center, position, cone), eps=1e-6, atol=1e-6, rtol=1e-4)
    rgb = image(center, position, cone)[0]
    grads = torch.autograd.grad(rgb.sum(), (position, cone))
    assert all(float(g.abs().max()) > 1e-3 for g in grads)  # the light really moves the image


SCENE = """
name = "spot_spheres"
precision = "float64"
[time]
fps = 30
frames = 2
substeps = 4
[camera]
position = [0.0, -2.2, 1.6]
look_at = [0.0, 0.1, 0.2]
fovy_deg = 50.0
width = 40
height = 30
[light]
type = "spot"
position = [0.3, -0.2, 1.6]
direction = [-0.2, 0.25, -1.0]
cone_deg = 25.0
falloff = 0.3
intensity = 0.7
ambient = 0.2
[[objects]]
type = "sphere"
position = [0.0, 0.1, 0.3]
radius = 0.3
"""


def test_sphere_scene_with_a_spot_light_renders_the_cone():
    from hybridsim.render.scene import render_trajectory
    from hybridsim.scene import parse_scene
    from hybridsim.sim.world import World
    from hybridsim.sim.rollout import rollout

    world = World(parse_scene(SCENE))
    layers = render_trajectory(world, rollout(world))
    directional = World(parse_scene(SCENE.replace('type = "spot"\nposition = [0.3, -0.2, 1.6]\n', "")
                                    .replace("cone_deg = 25.0\nfalloff = 0.3\n", "")))
    plain = render_trajectory(directional, rollout(directional))
    ground = layers["segmentation"][0] == 0
    # ground far outside the cone gets ambient only: much darker than under the directional light
    corner = layers["rgb"][0, -3:, :3].mean()
    assert float(corner) < 0.5 * float(plain["rgb"][0, -3:, :3].mean())
    assert bool(ground.any()) and float(layers["rgb"][0][ground].max()) > float(corner) + 0.2


# ------------------------------------------------------------------------------------ textures


def _ortho(width=64, height=48):
    return Camera(position=(0.0, -3.0, 0.5), look_at=(0.0, 0.0, 0.5), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                  width=width, height=height, projection="orthographic", ortho_height=1.2)


def test_checker_texture_on_a_sphere_shows_the_cell_of_each_surface_point():
    from hybridsim.render.textures import CheckerTexture

    cam = Camera(position=(0.4, -1.4, 0.9), look_at=(0.05, 0.1, 0.35), up=(0.0, 0.0, 1.0), fovy_deg=40.0, width=64,
                 height=48)
    center = torch.tensor([[0.05, 0.1, 0.35]], dtype=D64)
    texture = CheckerTexture(0.15, ((0.9, 0.8, 0.7), (0.1, 0.2, 0.3)))
    layers = render_spheres(cam, center, torch.tensor([0.35], dtype=D64), torch.tensor([[1.0, 1.0, 1.0]], dtype=D64),
                            edge_softness=0.0, albedo=True, textures=[texture])
    seg = layers["segmentation"]
    coords = (surface_points(cam, layers["depth"]) - center[0]).numpy()
    cells = coords / 0.15
    parity = np.floor(cells).sum(-1) % 2  # 0 even cell, 1 odd cell
    # pixels whose point is well inside a cell (away from its faces by 0.15 of a cell)
    clear = ((cells - np.floor(cells)) > 0.15).all(-1) & ((np.ceil(cells) - cells) > 0.15).all(-1)
    facing = (layers["normal"][..., 2] < -0.6).numpy()  # not grazing: the filter footprint stays small
    region = (seg == 1).numpy() & clear & facing
    assert region.sum() > 100 and (parity[region] == 0).any() and (parity[region] == 1).any()
    expected = np.where(parity[..., None] == 0, (0.9, 0.8, 0.7), (0.1, 0.2, 0.3))
    assert np.allclose(layers["albedo"].numpy()[region], expected[region], atol=1e-6)


def test_texture_moves_with_the_sphere():
    from hybridsim.render.textures import StripesTexture

    cam = _ortho()
    shift_px = 6
    shift_m = shift_px / cam.focal()
    texture = StripesTexture(0.08, direction=(1.0, 0.0, 1.0))
    radii, colors = torch.tensor([0.3], dtype=D64), torch.tensor([[1.0, 0.9, 0.8]], dtype=D64)
    first = render_spheres(cam, torch.tensor([[0.0, 0.0, 0.5]], dtype=D64), radii, colors, textures=[texture],
                           albedo=True)["albedo"]
    moved = render_spheres(cam, torch.tensor([[shift_m, 0.0, 0.5]], dtype=D64), radii, colors, textures=[texture],
                           albedo=True)["albedo"]
    assert torch.allclose(moved[:, shift_px:], first[:, :-shift_px], atol=1e-9)
    assert float((moved - first).abs().max()) > 0.3  # and the stripes are really there


def test_textured_sphere_gradients_match_finite_differences():
    from hybridsim.render.textures import StripesTexture

    cam = _camera(10, 8)
    texture = StripesTexture(0.2, direction=(1.0, 0.2, 0.5))

    def image(center, radius, color):
        out = render_spheres(cam, center, radius, color, checker_colors=GREY, textures=[texture], albedo=True, **SPOT)
        return out["rgb"], out["albedo"]

    center = torch.tensor([[0.05, 0.1, 0.3]], dtype=D64, requires_grad=True)
    radius = torch.tensor([0.4], dtype=D64, requires_grad=True)
    color = torch.tensor([[0.8, 0.6, 0.4]], dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(image, (center, radius, color), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_sphere_scene_with_a_texture_renders_it():
    from hybridsim.render.scene import render_trajectory
    from hybridsim.scene import parse_scene
    from hybridsim.sim.rollout import rollout
    from hybridsim.sim.world import World

    text = SCENE.replace("radius = 0.3\n", 'radius = 0.3\ntexture = { kind = "checker", size = 0.1, '
                                           'colors = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]] }\n')
    world = World(parse_scene(text))
    spec = world.spec.objects[0]
    assert spec.color == (1.0, 1.0, 1.0)  # a textured sphere defaults to white (the texture's own colours)
    layers = render_trajectory(world, rollout(world), albedo=True)
    on_sphere = layers["segmentation"][0] == 1
    albedo = layers["albedo"][0][on_sphere]
    # both checker colours show: red-dominant and blue-dominant pixels
    assert bool((albedo[:, 0] > 0.8).any()) and bool((albedo[:, 2] > 0.8).any())
    with pytest.raises(Exception, match="texture"):
        parse_scene(text.replace("size = 0.1", "size = { value = 0.1, learn = true }"))


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
def test_texture_footprint_matches_the_step_between_neighbouring_pixels(projection):
    """The screen derivatives handed to a texture (which set its filter) are the distance between
    the surface points of neighbouring pixels (central differences, to within the curvature)."""
    from hybridsim.render.textures import Texture

    class Spy(Texture):
        def __init__(self):
            self.calls = []

        def evaluate(self, coords, d_dx, d_dy, normals):
            self.calls.append((coords.detach(), d_dx.detach(), d_dy.detach()))
            return torch.ones_like(coords)

    cam = Camera(position=(0.4, -1.4, 0.9), look_at=(0.05, 0.1, 0.35), up=(0.0, 0.0, 1.0), fovy_deg=40.0, width=64,
                 height=48, projection=projection, ortho_height=1.0)
    spy, center = Spy(), torch.tensor([[0.05, 0.1, 0.35]], dtype=D64)
    layers = render_spheres(cam, center, torch.tensor([0.35], dtype=D64), torch.ones(1, 3, dtype=D64),
                            edge_softness=0.0, textures=[spy])
    coords, d_dx, d_dy = (torch.cat(x) for x in zip(*spy.calls))
    points = surface_points(cam, layers["depth"])
    relative = (points - center[0]).reshape(-1, 3)
    relative = torch.where(torch.isfinite(relative), relative, torch.full_like(relative, 1e6))
    distance = torch.cdist(coords, relative)
    pixel, matched = distance.argmin(1), distance.min(1).values < 1e-7  # each texture call's pixel
    step_x = torch.zeros(48 * 64, 3, dtype=D64).index_copy(0, pixel[matched], d_dx[matched]).reshape(48, 64, 3)
    step_y = torch.zeros(48 * 64, 3, dtype=D64).index_copy(0, pixel[matched], d_dy[matched]).reshape(48, 64, 3)
    on = layers["segmentation"] == 1
    inner = on & (layers["normal"][..., 2] < -0.7)  # away from grazing, where curvature dominates
    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        inner &= torch.roll(on, shift, (0, 1))
    inner = inner[1:-1, 1:-1]
    central_x = (points[1:-1, 2:] - points[1:-1, :-2]) / 2
    central_y = (points[2:, 1:-1] - points[:-2, 1:-1]) / 2
    assert int(inner.sum()) > 300
    for analytic, central in ((step_x[1:-1, 1:-1], central_x), (step_y[1:-1, 1:-1], central_y)):
        error = (analytic - central)[inner].norm(dim=-1) / central[inner].norm(dim=-1)
        assert float(error.max()) < 0.05
