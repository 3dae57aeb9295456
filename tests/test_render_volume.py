"""Volume ray marching (hybridsim.render.volume): closed forms, silhouettes, occlusion, depth,
flow and finite-difference gradients."""

import math

import pytest
import torch

from hybridsim.errors import AssetError
from hybridsim.render.camera import Camera
from hybridsim.render.volume import light_transmittance, render_volume


def _centres(cells, cell_size, origin=(0.0, 0.0, 0.0), dtype=torch.float64):
    axes = [origin[a] + (torch.arange(cells[a], dtype=dtype) + 0.5) * cell_size for a in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (nx, ny, nz, 3)


def _ortho_along(axis: int, centre, distance=3.0, size=32, view=2.0):
    position = list(centre)
    position[axis] -= distance
    up = (0.0, 0.0, 1.0) if axis != 2 else (0.0, 1.0, 0.0)
    return Camera(position=position, look_at=centre, up=up, fovy_deg=40.0, width=size, height=size,
                  projection="orthographic", ortho_height=view)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_uniform_box_orthographic_alpha_matches_beer_lambert(axis):
    cells, dx, rho, opacity = (4, 6, 10), 0.1, 1.5, 2.0
    origin = (0.3, -0.2, 0.1)
    centre = [origin[a] + 0.5 * cells[a] * dx for a in range(3)]
    camera = _ortho_along(axis, centre)
    layers = render_volume(torch.full(cells, rho, dtype=torch.float64), origin=origin, cell_size=dx, camera=camera,
                           opacity=opacity)
    length = cells[axis] * dx
    expected = 1.0 - math.exp(-opacity * rho * length)
    # pixels whose ray passes through the box at least half a pixel inside its silhouette
    origins, _ = camera.rays(dtype=torch.float64)
    others = [a for a in range(3) if a != axis]
    inside = torch.ones(camera.height, camera.width, dtype=torch.bool)
    margin = 1.0 / camera.focal()
    for a in others:
        inside &= (origins[..., a] > origin[a] + margin) & (origins[..., a] < origin[a] + cells[a] * dx - margin)
    outside = torch.ones_like(inside)
    for a in others:
        outside &= ~((origins[..., a] > origin[a] - margin) & (origins[..., a] < origin[a] + cells[a] * dx + margin))
    outside = ~outside
    assert int(inside.sum()) > 20
    alpha = layers["alpha"]
    assert torch.allclose(alpha[inside], torch.full_like(alpha[inside], expected), rtol=0.01)
    assert float(alpha[~outside].abs().max()) == 0.0  # rays that miss the box see nothing
    assert bool(layers["mask"][inside].all())
    assert torch.allclose(layers["transmittance"], 1.0 - alpha)


def test_sphere_silhouette_perspective():
    cells, dx = (24, 28, 20), 1.0 / 24
    origin = (-0.5, -0.6, 0.0)
    centre = torch.tensor([0.05, -0.1, 0.42], dtype=torch.float64)
    radius = 0.28
    points = _centres(cells, dx, origin)
    density = ((points - centre).norm(dim=-1) < radius).double() * 50.0
    camera = Camera(position=(0.4, -2.5, 1.1), look_at=centre.tolist(), up=(0, 0, 1), fovy_deg=35.0, width=48,
                    height=40)
    mask = render_volume(density, origin=origin, cell_size=dx, camera=camera)["mask"]
    origins, dirs = camera.rays(dtype=torch.float64)
    to_centre = centre - origins
    along = (to_centre * dirs).sum(-1)
    miss = (to_centre - along[..., None] * dirs).norm(dim=-1)  # distance of the ray from the centre
    assert bool(mask[miss < radius - 1.5 * dx].all())
    assert not bool(mask[miss > radius + 1.5 * dx].any())
    assert int((miss < radius - 1.5 * dx).sum()) > 60


def test_opaque_background_in_front_hides_volume():
    cells, dx = (6, 6, 6), 0.1
    centre = (0.3, 0.3, 0.3)
    camera = _ortho_along(1, centre, distance=2.0, size=16, view=1.0)
    density = torch.full(cells, 3.0, dtype=torch.float64)
    background = torch.rand(16, 16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    wall = torch.full((16, 16), 1.5, dtype=torch.float64)  # camera z 1.5 m: in front of the box (1.7 to 2.3 m)
    layers = render_volume(density, origin=(0, 0, 0), cell_size=dx, camera=camera, background=background,
                           background_depth=wall)
    assert float(layers["alpha"].abs().max()) == 0.0
    assert torch.equal(layers["rgb"], background)
    assert torch.equal(layers["depth"], wall)
    # a surface half way through the box: the march stops there, half the optical depth
    middle = torch.full((16, 16), 2.0, dtype=torch.float64)
    half = render_volume(density, origin=(0, 0, 0), cell_size=dx, camera=camera, background_depth=middle)
    centre_alpha = float(half["alpha"][8, 8])
    assert centre_alpha == pytest.approx(1.0 - math.exp(-3.0 * 0.3), rel=0.01)
    assert 1.7 < float(half["depth"][8, 8]) < 2.0


def test_perspective_background_depth_is_camera_z():
    """A wall at camera z = d cuts every ray at the same camera z, also off-axis."""
    cells, dx = (10, 10, 10), 0.1
    camera = Camera(position=(0.5, -1.0, 0.5), look_at=(0.5, 0.5, 0.5), up=(0, 0, 1), fovy_deg=40.0, width=20,
                    height=20)
    density = torch.full(cells, 4.0, dtype=torch.float64)
    wall = torch.full((20, 20), 1.5, dtype=torch.float64)  # box front at z = 1.0, wall 0.5 m behind it
    layers = render_volume(density, origin=(0, 0, 0), cell_size=dx, camera=camera, background_depth=wall)
    _, dirs = camera.rays(dtype=torch.float64)
    cos = dirs[..., 1]  # forward is +y
    expected = 1.0 - torch.exp(-4.0 * 0.5 / cos)
    assert torch.allclose(layers["alpha"][4:16, 4:16], expected[4:16, 4:16], rtol=0.01)


def test_thin_slab_expected_depth():
    cells, dx = (20, 40, 20), 0.025
    density = torch.zeros(cells, dtype=torch.float64)
    density[:, 25, :] = 2.0  # slab centred at y = 25.5 dx
    camera = Camera(position=(0.25, -0.8, 0.25), look_at=(0.25, 0.5, 0.25), up=(0, 0, 1), fovy_deg=30.0, width=24,
                    height=24)
    layers = render_volume(density, origin=(0, 0, 0), cell_size=dx, camera=camera, opacity=5.0)
    slab_z = 25.5 * dx + 0.8  # camera z of the slab plane (forward = +y)
    seen = layers["alpha"] > 0.05
    assert int(seen.sum()) > 100
    assert torch.allclose(layers["depth"][seen], torch.full_like(layers["depth"][seen], slab_z), atol=0.2 * dx)
    assert bool(torch.isinf(layers["depth"][layers["alpha"] < 1e-4]).all())  # no volume, no background: inf


def _blob(cells, dx, centre, width=0.08):
    points = _centres(cells, dx)
    return 4.0 * torch.exp(-((points - torch.tensor(centre, dtype=torch.float64)) ** 2).sum(-1) / (2 * width ** 2))


def test_flow_of_translating_blob_matches_next_frame():
    cells, dx = (32, 32, 32), 1.0 / 32
    centre, speed, frame_dt = [0.45, 0.5, 0.45], torch.tensor([0.6, -0.3, 0.4], dtype=torch.float64), 0.15
    camera = Camera(position=(0.9, -1.4, 1.0), look_at=(0.5, 0.5, 0.5), up=(0, 0, 1), fovy_deg=45.0, width=64,
                    height=64)
    velocity = speed.expand(*cells, 3).clone()
    now = render_volume(_blob(cells, dx, centre), origin=(0, 0, 0), cell_size=dx, camera=camera, velocity=velocity,
                        frame_dt=frame_dt, step_size=0.5 * dx)
    moved_centre = (torch.tensor(centre, dtype=torch.float64) + speed * frame_dt).tolist()
    later = render_volume(_blob(cells, dx, moved_centre), origin=(0, 0, 0), cell_size=dx, camera=camera,
                          step_size=0.5 * dx)

    def centroid(alpha):
        rows, cols = torch.meshgrid(torch.arange(64.0, dtype=torch.float64), torch.arange(64.0, dtype=torch.float64),
                                    indexing="ij")
        total = alpha.sum()
        return torch.stack([(alpha * (cols + 0.5)).sum() / total, (alpha * (rows + 0.5)).sum() / total])

    alpha = now["alpha"]
    mean_flow = (now["flow"] * alpha[..., None]).sum((0, 1)) / alpha.sum()
    predicted = centroid(alpha) + mean_flow
    shift = float((camera.project(torch.tensor(moved_centre, dtype=torch.float64))[0]
                   - camera.project(torch.tensor(centre, dtype=torch.float64))[0]).norm())
    assert shift > 3.0  # the blob moves several pixels
    assert float((predicted - centroid(later["alpha"])).norm()) < 0.5
    assert float(now["flow"][now["alpha"] < 1e-4].abs().max()) == 0.0


def test_flow_orthographic_uniform_velocity_is_exact():
    cells, dx = (8, 8, 8), 0.1
    camera = _ortho_along(1, (0.4, 0.4, 0.4), size=16, view=1.0)
    speed = torch.tensor([0.5, 2.0, -0.25], dtype=torch.float64)  # motion along the view does not show
    layers = render_volume(torch.ones(cells, dtype=torch.float64), origin=(0, 0, 0), cell_size=dx, camera=camera,
                           velocity=speed.expand(*cells, 3).clone(), frame_dt=0.2)
    covered = layers["alpha"] > 0.1
    expected = torch.tensor([0.5 * 0.2 * camera.focal(), 0.25 * 0.2 * camera.focal()], dtype=torch.float64)
    assert torch.allclose(layers["flow"][covered], expected.expand(int(covered.sum()), 2), atol=1e-9)


def test_light_transmittance_closed_form():
    cells, dx, rho = (5, 6, 7), 0.1, 2.0
    density = torch.full(cells, rho, dtype=torch.float64)
    down = light_transmittance(density, dx, (0.0, 0.0, -1.0))  # light from above
    k = torch.arange(cells[2], dtype=torch.float64)
    expected = torch.exp(-rho * (cells[2] - k - 0.5) * dx)
    assert torch.allclose(down, expected.expand(cells), rtol=1e-12)
    # oblique: cells whose upstream path stays inside the grid get the exact path length
    slanted = light_transmittance(density, dx, (0.5, 0.0, -1.0))
    path = (cells[2] - k - 0.5) * dx * math.sqrt(1.25)
    assert torch.allclose(slanted[4, 2, 3:], torch.exp(-rho * path[3:]), rtol=1e-12)


def test_lighting_darkens_the_shadowed_side():
    cells, dx = (16, 16, 16), 1.0 / 16
    camera = _ortho_along(1, (0.5, 0.5, 0.5), size=24, view=1.2)
    density = torch.full(cells, 3.0, dtype=torch.float64)
    lit = render_volume(density, origin=(0, 0, 0), cell_size=dx, camera=camera, light_direction=(0.0, 0.0, -1.0),
                        color=(1.0, 1.0, 1.0))["rgb"][..., 0]
    plain = render_volume(density, origin=(0, 0, 0), cell_size=dx, camera=camera, color=(1.0, 1.0, 1.0))["rgb"][..., 0]
    assert float(lit[6, 12]) > float(lit[17, 12]) + 0.2  # top (near the light) brighter than the bottom
    assert bool((lit <= plain + 1e-12).all())


def test_chunking_does_not_change_the_image():
    cells, dx = (8, 9, 7), 0.1
    density = torch.rand(cells, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    camera = Camera(position=(0.4, -1.2, 0.9), look_at=(0.4, 0.45, 0.35), up=(0, 0, 1), fovy_deg=50.0, width=20,
                    height=16)
    kwargs = dict(origin=(0, 0, 0), cell_size=dx, camera=camera, light_direction=(0.3, 0.1, -1.0),
                  velocity=torch.ones(*cells, 3, dtype=torch.float64), frame_dt=0.1)
    whole = render_volume(density, **kwargs)
    chunked = render_volume(density, chunk_samples=50, **kwargs)
    for key in ("rgb", "alpha", "depth", "flow"):
        assert torch.allclose(whole[key], chunked[key], rtol=1e-12, atol=1e-12), key


def test_gradcheck_density_opacity_color_velocity():
    cells, dx = (3, 4, 3), 0.2
    generator = torch.Generator().manual_seed(1)
    density = (torch.rand(cells, dtype=torch.float64, generator=generator) + 0.2).requires_grad_(True)
    opacity = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    color = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64, requires_grad=True)
    velocity = (torch.rand(*cells, 3, dtype=torch.float64, generator=generator) - 0.5).requires_grad_(True)
    camera = Camera(position=(0.3, -0.4, 0.3), look_at=(0.3, 0.4, 0.3), up=(0, 0, 1), fovy_deg=50.0, width=5,
                    height=4)

    def layers(density, opacity, color, velocity):
        out = render_volume(density, origin=(0, 0, 0), cell_size=dx, camera=camera, opacity=opacity, color=color,
                            velocity=velocity, frame_dt=0.1, light_direction=(0.4, 0.2, -1.0),
                            background=(0.1, 0.2, 0.3), chunk_samples=40)
        assert bool(torch.isfinite(out["depth"]).all())  # every pixel sees the box here
        return out["rgb"], out["alpha"], out["depth"], out["flow"]

    assert torch.autograd.gradcheck(layers, (density, opacity, color, velocity), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_bad_inputs_are_refused():
    camera = Camera(position=(0, -2, 0), look_at=(0, 0, 0), up=(0, 0, 1), fovy_deg=40.0, width=4, height=4)
    density = torch.ones(3, 3, 3)
    with pytest.raises(AssetError, match="density"):
        render_volume(torch.ones(3, 3), origin=(0, 0, 0), cell_size=0.1, camera=camera)
    with pytest.raises(AssetError, match="velocity"):
        render_volume(density, origin=(0, 0, 0), cell_size=0.1, camera=camera, velocity=torch.ones(3, 3, 2, 3),
                      frame_dt=0.1)
    with pytest.raises(AssetError, match="frame_dt"):
        render_volume(density, origin=(0, 0, 0), cell_size=0.1, camera=camera, velocity=torch.ones(3, 3, 3, 3))
    with pytest.raises(AssetError, match="cell_size"):
        render_volume(density, origin=(0, 0, 0), cell_size=0.0, camera=camera)
    with pytest.raises(AssetError, match="light_direction"):
        render_volume(density, origin=(0, 0, 0), cell_size=0.1, camera=camera, light_direction=(0, 0, 0))


def test_empty_space_skipping_keeps_the_image():
    """Marching only the samples near non-zero cells gives the same layers as the full march."""
    cells, dx = (20, 16, 18), 0.05
    density = _blob(cells, dx, [0.55, 0.4, 0.5], width=0.06)
    density = torch.where(density > 0.05, density, torch.zeros_like(density))  # a solver's exact zeros
    assert 0.01 < float((density > 0).double().mean()) < 0.2
    camera = Camera(position=(1.4, -1.0, 1.2), look_at=(0.5, 0.4, 0.45), up=(0, 0, 1), fovy_deg=45.0, width=40,
                    height=32)
    kwargs = dict(origin=(0, 0, 0), cell_size=dx, camera=camera, light_direction=(0.2, 0.3, -1.0), opacity=4.0,
                  velocity=torch.rand(*cells, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)),
                  frame_dt=0.1)
    skipped = render_volume(density, skip_empty=True, **kwargs)
    full = render_volume(density, skip_empty=False, **kwargs)
    assert float(skipped["alpha"].max()) > 0.5
    for key in ("rgb", "alpha", "depth", "flow"):
        assert torch.allclose(skipped[key], full[key], rtol=1e-10, atol=1e-12), key
    empty = render_volume(torch.zeros(cells, dtype=torch.float64), **kwargs)
    assert float(empty["alpha"].abs().max()) == 0.0 and bool(torch.isinf(empty["depth"]).all())


def test_per_cell_color_and_precomputed_light():
    cells, dx = (8, 6, 6), 0.1
    density = torch.full(cells, 2.0, dtype=torch.float64)
    camera = _ortho_along(1, (0.4, 0.3, 0.3), size=16, view=1.0)
    kwargs = dict(origin=(0, 0, 0), cell_size=dx, camera=camera, light_direction=(0.2, 0.1, -1.0))
    uniform = render_volume(density, color=(0.2, 0.5, 0.7), **kwargs)
    per_cell = render_volume(density, color=torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64).expand(*cells, 3),
                             **kwargs)
    assert torch.allclose(uniform["rgb"], per_cell["rgb"], atol=1e-12)
    light = light_transmittance(density, dx, (0.2, 0.1, -1.0))
    reused = render_volume(density, color=(0.2, 0.5, 0.7), light=light, origin=(0, 0, 0), cell_size=dx, camera=camera)
    assert torch.allclose(uniform["rgb"], reused["rgb"], atol=1e-12)
    # red in the low-x half, blue in the high-x half: the image's left and right sides
    halves = torch.zeros(*cells, 3, dtype=torch.float64)
    halves[:4, ..., 0] = 1.0
    halves[4:, ..., 2] = 1.0
    split = render_volume(density * 3.0, color=halves, origin=(0, 0, 0), cell_size=dx, camera=camera)["rgb"]
    assert float(split[8, 2, 0]) > 0.9 and float(split[8, 2, 2]) < 1e-9  # x increases to the right
    assert float(split[8, 12, 2]) > 0.9 and float(split[8, 12, 0]) < 1e-9
