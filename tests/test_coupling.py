"""Two-way coupling of MPM material with rigid bodies (hybridsim.sim.coupled): scenes with [mpm]
and [[objects]], momentum conservation, buoyancy, gradients against finite differences, Warp vs
Taichi, and the depth-composited render (hybridsim.render.composite)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hybridsim.cli import main
from hybridsim.errors import SceneError
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.coupled import coupled_rollout, coupled_system, total_momentum
from hybridsim.sim.world import World
from hybridsim.testing import finite_difference_gradcheck

# a box thrown into a small pool: the box reaches the water in the first substeps
TINY = """
name = "tiny_splash"
backend = "{backend}"
precision = "float64"
[time]
fps = 30
frames = {frames}
[camera]
position = [0.0, -3.0, 0.15]
look_at = [0.0, 0.0, 0.15]
projection = "orthographic"
ortho_height = 0.4
width = 40
height = 32
[ground]
height = 0.0
[mpm]
dim = 2
resolution = [17, 13]
size = 0.5
origin = [-0.25, -0.09375]
background = [0.1, 0.1, 0.1]
[[mpm.materials]]
name = "water"
kind = "liquid"
bulk_modulus = {{ value = 2e3, learn = true, range = [5e2, 5e3] }}
viscosity = {{ value = 0.5, learn = true, range = [0.0, 2.0] }}
density = {{ value = 1000.0, learn = true, range = [500.0, 2000.0] }}
[[mpm.bodies]]
material = "water"
center = [0.0, 0.06]
half_size = [0.14, 0.06]
[[objects]]
type = "box"
position = [0.02, 0.0, 0.17]
half_extents = [0.05, 0.05, 0.04]
velocity = {{ value = [0.3, 0.0, -1.2], learn = true, range = [-5.0, 5.0] }}
angular_velocity = [0.0, 1.0, 0.0]
mass = {{ value = 2.0, learn = true, range = [0.5, 10.0] }}
restitution = 0.0
color = [0.9, 0.5, 0.2]
"""


def _tiny(backend="warp", frames=3, **replace):
    text = TINY.format(backend=backend, frames=frames)
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return World(parse_scene(text, source="tiny.toml"), device="cpu")


# -- scenes ---------------------------------------------------------------------------------------

def test_shipped_box_splash_is_a_coupled_scene():
    from importlib.resources import files

    spec = load_scene(str(files("hybridsim.scenes") / "box_splash.toml"))
    assert parse_scene(spec.to_toml()) == spec
    world = World(spec, device="cpu")
    assert world.coupled and spec.mpm.dim == 2
    assert set(world.parameters()) == {"mpm.materials[0].viscosity", "objects[0].velocity", "objects[0].density"}
    system = coupled_system(world)
    assert system.solver.coupling.depth.tolist() == pytest.approx([0.2])  # 2 hy of the box
    assert system.solver.coupling.band == pytest.approx(0.75 * system.mpm_model.grid.dx)
    assert system.substeps * system.dt == pytest.approx(1.0 / 30.0)


@pytest.mark.parametrize("old,new,field", [
    ("position = [0.02, 0.0, 0.17]", "position = [0.02, 0.1, 0.17]", "objects[0].position"),
    ("angular_velocity = [0.0, 1.0, 0.0]", "angular_velocity = [1.0, 1.0, 0.0]", "objects[0].angular_velocity"),
    ("restitution = 0.0", "restitution = 0.0\norientation = [0.0, 0.0, 0.3]", "objects[0].orientation"),
    ('name = "tiny_splash"', 'name = "tiny_splash"\ngravity = [0.0, 1.0, -9.81]', "gravity"),
])
def test_2d_bodies_must_stay_in_the_plane(old, new, field):
    world = _tiny(**{old: new})
    with pytest.raises(SceneError) as info:
        coupled_system(world)
    assert str(info.value).startswith(f"tiny.toml: {field}: "), str(info.value)


def test_bodies_stay_in_the_plane_and_the_water_slows_the_thrown_box():
    world = _tiny(frames=6, **{"mass = { value = 2.0": "mass = { value = 0.8"})
    with torch.no_grad():
        trajectory = coupled_rollout(world)
    rigid = trajectory.rigid
    assert trajectory.frame_count == 7 and trajectory.mpm.positions.shape == (7, trajectory.mpm.positions.shape[1], 2)
    assert rigid.positions[..., 1].abs().max() == 0 and rigid.velocities[..., 1].abs().max() == 0
    assert rigid.angular_velocities[..., [0, 2]].abs().max() == 0
    assert rigid.orientations[..., [0, 2]].abs().max() == 0
    vz = rigid.velocities[:, 0, 2]
    assert vz[0] < -1.0 and vz[-1] > vz[1]  # thrown down, slowed by the water
    assert rigid.positions[:, 0, 2].min() > 0.04  # never reached the floor (bottom at z - 0.04)


# -- momentum -------------------------------------------------------------------------------------

_MOMENTUM_2D = """
[mpm]
dim = 2
resolution = [33, 33]
size = 1.0
origin = [-0.5, -0.5]
substeps = 12
[[mpm.materials]]
name = "water"
kind = "liquid"
bulk_modulus = 4e3
viscosity = 0.2
[[mpm.materials]]
name = "jelly"
kind = "elastic"
youngs_modulus = 4e3
density = 800.0
[[mpm.bodies]]
material = "water"
center = [0.08, 0.0]
half_size = [0.1, 0.12]
[[mpm.bodies]]
material = "jelly"
center = [0.0, 0.2]
half_size = [0.06, 0.05]
velocity = [0.2, -0.3]
[[objects]]
type = "box"
position = [-0.15, 0.0, -0.02]
velocity = [1.0, 0.0, 0.2]
angular_velocity = [0.0, 2.0, 0.0]
half_extents = [0.05, 0.05, 0.04]
density = 600.0
"""

_MOMENTUM_3D = """
[mpm]
dim = 3
resolution = 21
size = 0.8
origin = [-0.4, -0.4, -0.4]
substeps = 10
[[mpm.materials]]
name = "water"
kind = "liquid"
bulk_modulus = 4e3
viscosity = 0.2
[[mpm.bodies]]
material = "water"
center = [0.06, 0.0, 0.0]
half_size = [0.08, 0.1, 0.1]
[[objects]]
type = "box"
position = [-0.12, 0.0, -0.02]
velocity = [1.0, 0.2, 0.3]
angular_velocity = [0.5, 2.0, 0.0]
half_extents = [0.05, 0.05, 0.04]
density = 600.0
"""


@pytest.mark.parametrize("table,frames", [(_MOMENTUM_2D, 14), (_MOMENTUM_3D, 6)], ids=["2d", "3d"])
def test_linear_momentum_of_material_and_body_is_conserved_without_gravity(table, frames):
    text = f"""
name = "momentum"
precision = "float64"
gravity = [0.0, 0.0, 0.0]
[time]
fps = 30
frames = {frames}
[camera]
position = [0.0, -3.0, 0.0]
look_at = [0.0, 0.0, 0.0]
[ground]
enabled = false
{table}"""
    world = World(parse_scene(text, source="momentum.toml"), device="cpu")
    system = coupled_system(world)
    with torch.no_grad():
        trajectory = coupled_rollout(world, system=system)
    mass = system.mpm_model.particle_parameters().mass
    momentum = torch.stack([
        total_momentum(SimpleNamespace(particle_velocity=trajectory.mpm.velocities[f]), mass,
                       SimpleNamespace(body_velocity=trajectory.rigid.velocities[f]), system.rigid_model.body_mass,
                       trajectory.depth) for f in range(trajectory.frame_count)])
    body = system.rigid_model.body_mass * trajectory.rigid.velocities[:, 0, 0]
    assert body[-1] < 0.5 * body[0]  # the body gave most of its momentum to the material...
    drift = (momentum - momentum[0]).abs().max() / momentum[0].abs().max()
    assert drift < 1e-13, drift  # ... which took exactly that much over all the substeps
    assert frames * system.substeps >= 60
    grid = system.mpm_model.grid  # the walls never came into play (they would change the momentum)
    inner = torch.tensor(grid.lower, dtype=torch.float64) + (grid.boundary_cells + 1.5) * grid.dx
    x = trajectory.mpm.positions
    assert bool((x > inner).all()) and bool((x < -inner).all())


# -- buoyancy -------------------------------------------------------------------------------------

def _pool(density: float, frames: int, hz: float = 0.06, start: float | None = None) -> World:
    """A 2D pool (water surface ~0.165 m after settling) with a box of ``density`` placed at its
    floating height (or ``start``) at rest."""
    surface = 0.19
    centre = surface - 2.0 * hz * density / 1000.0 + hz if start is None else start
    water = min(centre - hz, 0.19)  # the water column under the box
    text = f"""
name = "float"
precision = "float32"
[time]
fps = 30
frames = {frames}
[camera]
position = [0.0, -3.0, 0.3]
look_at = [0.0, 0.0, 0.3]
[ground]
height = 0.0
restitution = 0.0
[mpm]
dim = 2
resolution = [61, 41]
size = 1.0
origin = [-0.5, -0.05]
[[mpm.materials]]
name = "water"
kind = "liquid"
bulk_modulus = 2e4
viscosity = 2.0
[[mpm.bodies]]
material = "water"
center = [-0.27, 0.1]
half_size = [0.17, 0.1]
[[mpm.bodies]]
material = "water"
center = [0.27, 0.1]
half_size = [0.17, 0.1]
[[mpm.bodies]]
material = "water"
center = [0.0, {water / 2}]
half_size = [0.1, {water / 2}]
[[objects]]
type = "box"
position = [0.0, 0.0, {centre}]
half_extents = [0.08, 0.1, {hz}]
density = {density}
restitution = 0.0
"""
    return World(parse_scene(text, source="float.toml"), device="cpu")


def _immersion(density: float, frames: int = 60) -> tuple[float, float]:
    """(measured immersion depth averaged over the second half, closed form 2 hz rho_b / rho_w)."""
    world = _pool(density, frames)
    with torch.no_grad():
        trajectory = coupled_rollout(world)
    z = trajectory.rigid.positions[frames // 2:, 0, 2].mean()
    surfaces = [_surface(x, 0.08 + 0.05, trajectory.mpm.model.grid.dx) for x in trajectory.mpm.positions[frames // 2:]]
    return sum(surfaces) / len(surfaces) - (float(z) - 0.06), 0.12 * density / 1000.0


def _surface(x: torch.Tensor, away: float, dx: float) -> float:
    """The free surface height away from the box (|x| > ``away``, also |y| in 3D): the median over
    columns dx wide of the top particle, plus half a particle spacing (dx / 4)."""
    horizontal = x[:, :-1]
    far = (horizontal.abs() > away).any(dim=1)
    columns = torch.floor(horizontal[far] / dx).long()
    key = columns[:, 0] * 100000 + (columns[:, 1] if columns.shape[1] > 1 else 0)
    tops = torch.full((int(key.max() - key.min()) + 1,), -math.inf, dtype=x.dtype)
    tops = tops.scatter_reduce(0, key - key.min(), x[far, -1], "amax")
    return float(tops[torch.isfinite(tops)].median()) + dx / 4


def test_light_box_floats_at_the_density_ratio_and_heavy_box_sinks():
    depth, expected = _immersion(500.0)
    assert abs(depth / expected - 1.0) < 0.1, (depth, expected)
    world = _pool(2500.0, 24, start=0.2)
    with torch.no_grad():
        trajectory = coupled_rollout(world)
    z = trajectory.rigid.positions[:, 0, 2]
    assert float(z[-1]) == pytest.approx(0.06, abs=0.01)  # resting on the floor (half height 0.06)
    assert float(z[8] - z[4]) < -0.02  # sank through the water


@pytest.mark.slow
@pytest.mark.parametrize("density", [250.0, 750.0])
def test_floating_depth_matches_the_density_ratio_slow(density):
    depth, expected = _immersion(density, frames=90)
    assert abs(depth / expected - 1.0) < 0.1, (depth, expected)


@pytest.mark.slow
def test_a_3d_box_floats_near_the_density_ratio():
    # 3D, dx = 0.025 m, a 0.2 x 0.2 x 0.1 m box of density 500 in a pool built around it
    hz, h, top, density = 0.05, 0.1, 0.2, 500.0
    centre = top - 2.0 * hz * density / 1000.0 + hz
    blocks = [(0.0, -(0.17 + h) / 2, top / 2, 0.17, (0.17 - h) / 2, top / 2),
              (0.0, (0.17 + h) / 2, top / 2, 0.17, (0.17 - h) / 2, top / 2),
              (-(0.17 + h) / 2, 0.0, top / 2, (0.17 - h) / 2, h, top / 2),
              ((0.17 + h) / 2, 0.0, top / 2, (0.17 - h) / 2, h, top / 2),
              (0.0, 0.0, (centre - hz) / 2, h, h, (centre - hz) / 2)]
    bodies = "".join(f'[[mpm.bodies]]\nmaterial = "water"\ncenter = [{a}, {b}, {c}]\nhalf_size = [{d}, {e}, {f}]\n'
                     for a, b, c, d, e, f in blocks)
    text = f"""
name = "float3d"
[time]
fps = 30
frames = 45
[camera]
position = [0.0, -3.0, 0.3]
look_at = [0.0, 0.0, 0.3]
[ground]
restitution = 0.0
[mpm]
dim = 3
resolution = 21
size = 0.5
origin = [-0.25, -0.25, -0.075]
[[mpm.materials]]
name = "water"
kind = "liquid"
bulk_modulus = 2e4
viscosity = 5.0
{bodies}
[[objects]]
type = "box"
position = [0.0, 0.0, {centre}]
half_extents = [{h}, {h}, {hz}]
density = {density}
restitution = 0.0
"""
    world = World(parse_scene(text, source="float3d.toml"), device="cpu")
    with torch.no_grad():
        trajectory = coupled_rollout(world)
    z = float(trajectory.rigid.positions[30:, 0, 2].mean())
    dx = trajectory.mpm.model.grid.dx
    surfaces = [_surface(x, h + 2 * dx, dx) for x in trajectory.mpm.positions[30:]]
    depth = sum(surfaces) / len(surfaces) - (z - hz)
    print(f"3D floating depth / closed form: {depth / (2 * hz * density / 1000.0):.3f}")
    assert abs(depth / (2 * hz * density / 1000.0) - 1.0) < 0.2, depth  # ~1.13 on this coarse grid


# -- gradients and backends -----------------------------------------------------------------------

def _final_body_loss(world, frames=3):
    def evaluate(values):
        trajectory = coupled_rollout(world, values, frames=frames)
        weights = torch.tensor([0.7, 0.0, 1.3], dtype=torch.float64)
        return (trajectory.rigid.positions[-1, 0] * weights).sum() + 0.3 * trajectory.rigid.orientations[-1, 0, 1], \
            trajectory.rigid

    return evaluate


def test_gradients_of_the_final_body_pose_match_finite_differences():
    world = _tiny()
    rows = finite_difference_gradcheck(world, evaluate=_final_body_loss(world))
    by_name = {row.name: row for row in rows}
    for name in ("objects[0].velocity[0]", "objects[0].velocity[2]", "objects[0].mass",
                 "mpm.materials[0].bulk_modulus", "mpm.materials[0].viscosity", "mpm.materials[0].density"):
        row = by_name[name]
        assert row.autodiff != 0.0 and row.error < 1e-5, (name, row)  # through the coupling both ways


def test_checkpointed_coupled_gradients_equal_plain_ones():
    world = _tiny(frames=4)
    grads = []
    for checkpoint in (False, True):
        params = world.parameters()
        trajectory = coupled_rollout(world, params, checkpoint=checkpoint, segment_frames=1)
        loss = trajectory.rigid.positions[-1, 0, 2] + trajectory.mpm.positions[-1, :, 1].mean()
        grads.append(torch.autograd.grad(loss, list(params.values())))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def _backends(frames: int, gradients: bool):
    results = {}
    for backend in ("warp", "taichi"):
        world = _tiny(backend=backend, frames=frames)
        params = world.parameters()
        with torch.set_grad_enabled(gradients):
            trajectory = coupled_rollout(world, params)
        grads = ()
        if gradients:
            loss = trajectory.rigid.positions[-1, 0, 2] + trajectory.mpm.positions[-1, :, 1].mean()
            grads = torch.autograd.grad(loss, list(params.values()))
        results[backend] = (trajectory, grads)
    (a, ga), (b, gb) = results["warp"], results["taichi"]
    assert torch.allclose(a.mpm.positions, b.mpm.positions, rtol=0, atol=1e-12)
    assert torch.allclose(a.mpm.velocities, b.mpm.velocities, rtol=0, atol=1e-10)
    assert torch.allclose(a.rigid.positions, b.rigid.positions, rtol=0, atol=1e-12)
    assert torch.allclose(a.rigid.orientations, b.rigid.orientations, rtol=0, atol=1e-12)
    assert torch.allclose(a.rigid.velocities, b.rigid.velocities, rtol=0, atol=1e-10)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-14), (x, y)


def test_warp_and_taichi_give_the_same_coupled_result():
    _backends(frames=6, gradients=False)


@pytest.mark.slow  # Taichi's reverse kernels (MPM and rigid, float64) take long to load or compile
def test_warp_and_taichi_give_the_same_coupled_gradients():
    _backends(frames=3, gradients=True)


# -- rendering ------------------------------------------------------------------------------------

def test_render_composites_particles_and_the_box(tmp_path):
    scene = tmp_path / "tiny.toml"
    scene.write_text(TINY.format(backend="warp", frames=4))
    out = tmp_path / "tiny.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 0
    for suffix in (".mp4", ".layers.npz", ".flow.mp4", ".states.npz", ".camera.json"):
        assert out.with_suffix(suffix).is_file()
    layers = np.load(out.with_suffix(".layers.npz"))
    states = np.load(out.with_suffix(".states.npz"))
    seg, depth = layers["segmentation"], layers["depth"]
    assert set(np.unique(seg)) == {0, 1, 2}  # background, object 0 (id 1), water (K + 1 + 0 = 2)
    assert states["body_positions"].shape == (5, 1, 3) and states["positions"].shape[0] == 5
    # the box (in front: its face at y = -0.05) is nearer than the water (y = 0)
    assert depth[seg == 1].max() < depth[seg == 2].min()
    assert np.isinf(depth[seg == 0]).all()
    # the box's flow is its rigid motion: at its centre pixel, the projected centre displacement
    from hybridsim.render import Camera

    spec = load_scene(str(scene))
    camera = Camera.from_spec(spec.camera)
    centres = torch.tensor(states["body_positions"][:, 0], dtype=torch.float64)
    pixels = camera.project(centres)[0].numpy()
    for t in range(3):
        col, row = (int(v) for v in np.floor(pixels[t]))
        assert seg[t, row, col] == 1
        # the centre pixel is within half a pixel of the centre: rotation adds at most w dt * 0.7 px
        expected = pixels[t + 1] - pixels[t]
        assert np.abs(layers["flow_forward"][t, row, col] - expected).max() < 0.6
    assert layers["occlusion_forward"][-1].all() and not layers["occlusion_forward"][0][seg[0] == 1].all()
    # the background keeps [mpm].background; the box is drawn in its colour (shaded)
    from hybridsim.render import read_frames

    rgb, _ = read_frames(out)
    assert np.abs(rgb[0][seg[0] == 0].astype(float) - 25.5).mean() < 3.0
    box = rgb[0][seg[0] == 1].astype(float).mean(0)
    assert box[0] > box[1] > box[2]


def test_pixel_gradients_through_the_composite_match_finite_differences():
    from hybridsim.testing import scene_evaluator

    world = _tiny(frames=2)
    rows = finite_difference_gradcheck(world, evaluate=scene_evaluator(world, frames=2, pixel=True))
    for row in rows:
        if row.name != "objects[0].velocity[1]":
            assert row.autodiff != 0.0 and row.error < 1e-5, row


@pytest.mark.filterwarnings("ignore:.*mpm.substeps = 2")
def test_a_blow_up_keeps_the_good_frames(tmp_path):
    # a tenfold throw with few substeps: the particle CFL guard stops the run and names the frame
    text = TINY.format(backend="warp", frames=6)
    text = text.replace("[0.3, 0.0, -1.2], learn = true, range = [-5.0, 5.0]",
                        "[0.3, 0.0, -12.0], learn = true, range = [-20.0, 20.0]")
    text = text.replace("[mpm]\n", "[mpm]\nsubsteps = 2\n")
    scene = tmp_path / "fast.toml"
    scene.write_text(text)
    out = tmp_path / "fast.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 1
    partial = tmp_path / "fast.partial.mp4"
    assert partial.is_file() and partial.with_suffix(".states.npz").is_file()


@pytest.mark.slow
def test_box_splash_renders(tmp_path):
    import time

    from importlib.resources import files

    out = tmp_path / "splash.mp4"
    start = time.perf_counter()
    assert main(["render", str(files("hybridsim.scenes") / "box_splash.toml"), "-o", str(out), "--quiet"]) == 0
    elapsed = time.perf_counter() - start
    states = np.load(out.with_suffix(".states.npz"))
    z = states["body_positions"][:, 0, 2]
    assert z.min() > 0.07 and 0.12 < z[-20:].mean() < 0.26  # splashed in and floats (surface ~0.2 m)
    print(f"box_splash: {elapsed:.1f} s")
    assert math.isfinite(elapsed)
