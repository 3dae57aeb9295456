"""3D grid fluid: projection, conservation, closed-form rest, backend agreement, gradients, guards."""

import warnings

import numpy as np
import pytest
import torch

from hybridsim.errors import HybridsimError
from hybridsim.solvers.grid_fluid3d import GridFluid3DBuilder, GridFluid3DControl, SolverGridFluid3D, rollout_grid_fluid3d
from hybridsim.solvers.grid_fluid3d.model import _disc_rectangle_area

BACKENDS = ["warp", "taichi"]
D64 = torch.float64


def plume_model(cells=(8, 8, 10), *, dtype=D64, boundary="wall", buoyancy=2.0, rate=2.0, obstacle=True,
                vorticity=0.0, viscosity=0.0, wall_slip="free_slip", origin=(-0.4, -0.4, 0.0)):
    dx = 0.1
    builder = GridFluid3DBuilder(cell_count=cells, cell_size=dx, origin=origin, boundary=boundary, wall_slip=wall_slip,
                                 buoyancy=buoyancy, vorticity_strength=vorticity, viscosity=viscosity)
    builder.add_inflow_sphere((0.0, 0.0, 0.2), 0.17, rate)
    if obstacle:
        builder.add_obstacle_sphere((0.02, -0.013, 0.6), 0.19)  # no face plane tangent to it
    return builder.finalize(dtype=dtype)


def smooth_velocity(model, seed=0):
    """A smooth random face velocity field (a few low Fourier modes per component)."""
    generator = torch.Generator().manual_seed(seed)
    fields = []
    for axis, shape in enumerate(model.face_shapes):
        grids = torch.meshgrid(*(torch.linspace(0.0, 1.0, n, dtype=D64) for n in shape), indexing="ij")
        field = torch.zeros(shape, dtype=D64)
        for _ in range(3):
            k = torch.randint(1, 3, (3,), generator=generator).to(D64) * torch.pi
            phase = torch.rand(3, generator=generator, dtype=D64) * 6.0
            field += torch.sin(k[0] * grids[0] + phase[0]) * torch.sin(k[1] * grids[1] + phase[1]) * torch.cos(
                k[2] * grids[2] + phase[2])
        fields.append(field.to(model.dtype))
    return fields


# ------------------------------------------------------------------ geometry
def test_disc_rectangle_area_matches_quadrature_and_is_differentiable():
    r = torch.tensor(0.7, dtype=D64)
    boxes = [(-0.2, 0.3, 0.1, 0.5), (0.4, 0.9, -0.3, 0.2), (0.5, 0.8, 0.5, 0.8), (-1.0, 1.0, -1.0, 1.0), (0.8, 1.0, 0.0, 0.1)]
    for x0, x1, y0, y1 in boxes:
        exact = _disc_rectangle_area(r, *(torch.tensor(c, dtype=D64) for c in (x0, x1, y0, y1)))
        s = torch.linspace(x0, x1, 400_001, dtype=D64)
        half = (r * r - s * s).clamp(min=0).sqrt()
        length = (torch.minimum(half, torch.tensor(y1)) - torch.maximum(-half, torch.tensor(y0))).clamp(min=0)
        numeric = torch.trapezoid(length, s)
        assert abs(float(exact - numeric)) < 1e-6, (x0, x1, y0, y1)
    # the gradient with respect to a shift of the disc is the finite difference of the area
    shift = torch.tensor([0.05, -0.03], dtype=D64, requires_grad=True)
    bounds = (torch.tensor(0.4, dtype=D64), torch.tensor(0.9, dtype=D64), torch.tensor(-0.3, dtype=D64), torch.tensor(0.2, dtype=D64))
    area = lambda d: _disc_rectangle_area(r, bounds[0] - d[0], bounds[1] - d[0], bounds[2] - d[1], bounds[3] - d[1])  # noqa: E731
    assert torch.autograd.gradcheck(area, (shift,), eps=1e-6, atol=1e-7)


def test_sphere_face_fractions_block_its_cross_section():
    model = plume_model(cells=(10, 10, 10), obstacle=True)
    dx = model.cell_size
    # blocked area over all z-faces in the sphere's z range = sum over face planes of the disc areas
    area_z = model.face_fraction_z[:, :, 1:-1]  # interior planes (walls closed)
    blocked = float((1.0 - area_z).sum()) * dx * dx
    planes = torch.arange(1, 10, dtype=D64) * dx - 0.6
    expected = float((torch.pi * (0.19 ** 2 - planes ** 2).clamp(min=0)).sum())
    assert abs(blocked - expected) < 2e-3 * expected  # only faces closed to slivers differ


def test_box_obstacle_blocks_its_cross_section_and_projects_divergence_free():
    builder = GridFluid3DBuilder(cell_count=(10, 9, 8), cell_size=0.1, origin=(-0.5, -0.45, 0.0), boundary="wall")
    builder.add_obstacle_box((0.03, -0.02, 0.41), (0.17, 0.12, 0.23))
    model = builder.finalize(dtype=D64)
    # x-faces with the plane inside the box's x range are blocked over (2 hy)(2 hz); none outside
    planes = model.origin[0] + torch.arange(11, dtype=D64) * 0.1
    inside = ((planes - 0.03).abs() < 0.17)
    blocked = (1.0 - model.face_fraction_x[1:-1]).sum(dim=(1, 2)) * 0.01
    assert torch.allclose(blocked, inside[1:-1].to(D64) * (0.24 * 0.46), atol=1e-12)
    solver = SolverGridFluid3D(model, backend="warp")
    pu, pv, pw = solver.project(*smooth_velocity(model, seed=2))
    scale = max(float(f.abs().max()) for f in (pu, pv, pw)) / model.cell_size
    assert float(solver.divergence(pu, pv, pw).abs().max()) / scale < 1e-9


# ------------------------------------------------------------------ projection and closed forms
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (D64, 1e-9)])
def test_projection_leaves_no_divergence_with_an_obstacle(dtype, bound):
    model = plume_model(cells=(12, 12, 12), dtype=dtype)
    # at the default tolerance: the CG's relative L2 stop alone left 4.4e-5 in float32 here; the
    # projection refines until the max norm relative to max |u'| is below the tolerance
    solver = SolverGridFluid3D(model, backend="warp")
    u, v, w = smooth_velocity(model)
    pu, pv, pw = solver.project(u, v, w)
    assert solver.projection.last_refinements >= 1
    scale = max(float(f.abs().max()) for f in (pu, pv, pw)) / model.cell_size
    before = float(solver.divergence(u, v, w).abs().max()) / scale
    after = float(solver.divergence(pu, pv, pw).abs().max()) / scale
    assert before > 0.1
    assert after < bound, after
    # solid faces hold no velocity, projection is idempotent
    assert float((pw * (model.face_fraction_z == 0)).abs().max()) == 0.0
    again = solver.project(pu, pv, pw)
    assert max(float((a - b).abs().max()) for a, b in zip(again, (pu, pv, pw))) < (1e-4 if dtype == torch.float32 else 1e-8) * scale * model.cell_size


def test_hydrostatic_rest_uniform_density_stays_at_rest():
    """Uniform density in a closed box: the lift is a pure gradient and the projection removes it."""
    model = plume_model(cells=(8, 8, 8), obstacle=True, rate=0.0, buoyancy=3.0)
    solver = SolverGridFluid3D(model, backend="warp", density_advection="conservative")
    state = model.state()
    state.density.fill_(0.7)
    for _ in range(3):
        state = solver.step_differentiable(state, None, 0.05)
    assert max(float(f.abs().max()) for f in state.velocities) < 1e-10
    assert float((state.density - 0.7).abs().max()) < 1e-9  # the solve tolerance (1e-10) leaves round-off flow


def test_viscous_decay_of_a_shear_mode_matches_the_heat_equation():
    """u = sin(2 pi z / L) in a periodic box: advection does nothing, viscosity decays it by
    1 / (1 + nu dt k^2) per implicit step (the exact discrete rate uses the discrete Laplacian)."""
    n, dx, nu, dt = 8, 0.125, 0.02, 0.05
    builder = GridFluid3DBuilder(cell_count=(n, n, n), cell_size=dx, boundary="periodic", viscosity=nu)
    model = builder.finalize(dtype=D64)
    solver = SolverGridFluid3D(model, backend="warp")
    state = model.state()
    z = (torch.arange(n, dtype=D64) + 0.5) * dx
    profile = torch.sin(2 * torch.pi * z / (n * dx))
    state.velocity_x.copy_(profile.expand(n, n, n))
    steps = 4
    for _ in range(steps):
        state = solver.step_differentiable(state, None, dt)
    eigen = (2.0 - 2.0 * torch.cos(torch.tensor(2 * torch.pi / n, dtype=D64))) / dx ** 2
    expected = profile * (1.0 / (1.0 + nu * dt * eigen)) ** steps
    assert float((state.velocity_x - expected.expand(n, n, n)).abs().max()) < 1e-8


def test_conservative_density_is_conserved_in_a_closed_box():
    model = plume_model(cells=(10, 10, 12), dtype=torch.float32, rate=0.0, vorticity=0.2)
    solver = SolverGridFluid3D(model, backend="warp", advection="maccormack", density_advection="conservative")
    state = model.state()
    x, y, z = model.cell_centers()
    state.density.copy_(torch.exp(-((x ** 2 + y ** 2 + (z - 0.25) ** 2) / 0.03)))
    state.density.mul_(model.face_fraction_z[:, :, :-1] > 0)
    total = float(state.density.double().sum())
    for _ in range(15):
        state = solver.step_differentiable(state, None, 0.04)
    assert float(state.velocity_z.abs().max()) > 0.05  # it moved
    assert abs(float(state.density.double().sum()) - total) < 1e-5 * total


# ------------------------------------------------------------------ backends
def _run(backend, dtype, steps, advection="maccormack", density_advection="maccormack"):
    model = plume_model(cells=(8, 9, 10), dtype=dtype, vorticity=0.3, viscosity=2e-3, wall_slip="no_slip",
                        boundary=("wall", "wall", "periodic", "periodic", "wall", "open"))
    solver = SolverGridFluid3D(model, backend=backend, advection=advection, density_advection=density_advection)
    state = model.state()
    for _ in range(steps):
        state = solver.step_differentiable(state, None, 0.05)
    return state


@pytest.mark.parametrize("density_advection", ["maccormack", "conservative"])
def test_warp_and_taichi_agree_one_step_float32(density_advection):
    a = _run("warp", torch.float32, 2, density_advection=density_advection)
    b = _run("taichi", torch.float32, 2, density_advection=density_advection)
    for x, y in zip(a.tensors(), b.tensors()):
        assert float((x - y).abs().max()) <= 1e-6 * max(1.0, float(x.abs().max()))


def test_warp_and_taichi_agree_on_a_rollout_float64():
    a = _run("warp", D64, 6)
    b = _run("taichi", D64, 6)
    assert float(a.density.sum()) > 0
    for x, y in zip(a.tensors(), b.tensors()):
        assert float((x - y).abs().max()) <= 1e-6 * max(1.0, float(x.abs().max()))


# ------------------------------------------------------------------ gradients
def _loss(model, steps, backend="warp", advection="maccormack", density_advection="conservative"):
    solver = SolverGridFluid3D(model, backend=backend, advection=advection, density_advection=density_advection)
    trajectory = rollout_grid_fluid3d(model, model.state(), steps, dt=0.05, solver=solver)
    final = trajectory.state(-1)
    x, y, z = model.cell_centers()
    weight = torch.exp(-((x - 0.1) ** 2 + (y + 0.05) ** 2 + (z - 0.7) ** 2) / 0.05)
    return (final.density * weight).sum() + 0.3 * (final.velocity_z ** 2).sum()


def _check_gradients(steps, backend="warp", advection="maccormack"):
    model = plume_model(cells=(8, 8, 10))
    model.buoyancy.requires_grad_(True)
    model.inflow_rate.requires_grad_(True)
    model.obstacle_center.requires_grad_(True)
    loss = _loss(model, steps, backend, advection)
    loss.backward()
    grads = {"buoyancy": (model.buoyancy, 0, float(model.buoyancy.grad[0])),
             "rate": (model.inflow_rate, 0, float(model.inflow_rate.grad[0]))}
    for axis in range(3):
        grads[f"obstacle_{'xyz'[axis]}"] = (model.obstacle_center, (0, axis), float(model.obstacle_center.grad[0, axis]))
    errors = {}
    for name, (tensor, index, analytic) in grads.items():
        values = []
        for sign in (1.0, -1.0):
            probe = plume_model(cells=(8, 8, 10))
            target = {"buoyancy": probe.buoyancy, "rate": probe.inflow_rate}.get(name, probe.obstacle_center)
            with torch.no_grad():
                target[index] += sign * 1e-5
                if name.startswith("obstacle"):
                    probe.face_fraction_x, probe.face_fraction_y, probe.face_fraction_z = probe.face_fractions()
                values.append(float(_loss(probe, steps, backend, advection)))
        numeric = (values[0] - values[1]) / 2e-5
        errors[name] = abs(analytic - numeric) / max(abs(numeric), 1e-3)
        assert abs(numeric) > 1e-6 or name == "obstacle_z", (name, numeric)
    return errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences(backend):
    errors = _check_gradients(steps=4, backend=backend)
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.slow
def test_gradients_match_finite_differences_over_30_steps():
    # semi-Lagrangian velocity: after ~30 steps MacCormack's clamp switches within +-1e-5 of the
    # obstacle position (2% FD error there; 1e-6 steps agree), while the smooth map agrees to 1e-5
    errors = _check_gradients(steps=30, advection="semi_lagrangian")
    assert max(errors.values()) < 1e-4, errors


# ------------------------------------------------------------------ API and guards
def test_step_does_not_mutate_its_input_and_matches_step_differentiable():
    model = plume_model(dtype=torch.float32)
    solver = SolverGridFluid3D(model, backend="warp", advection="maccormack")
    state = model.state()
    state.velocity_z.fill_(0.1)
    before = [t.clone() for t in state.tensors()]
    out = model.state()
    solver.step(state, out, None, 0.05)
    assert all(torch.equal(a, b) for a, b in zip(before, state.tensors()))
    assert out.step_count == 1 and abs(out.time - 0.05) < 1e-12
    again = solver.step_differentiable(state, None, 0.05)
    assert all(torch.equal(a, b) for a, b in zip(out.tensors(), again.tensors()))


def test_control_acceleration_and_inflow_rate_override():
    model = plume_model(dtype=torch.float32, buoyancy=0.0, obstacle=False)
    solver = SolverGridFluid3D(model, backend="warp")
    push = torch.zeros(model.face_shape(0))
    push[1:-1] = 1.0
    control = GridFluid3DControl(acceleration_x=push, inflow_rate=torch.zeros(1))
    state = solver.step_differentiable(model.state(), control, 0.05)
    assert float(state.density.abs().max()) == 0.0
    assert float(state.velocity_x.abs().max()) > 0.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(HybridsimError, match="six"):
        GridFluid3DBuilder(cell_count=(4, 4, 4), boundary=("wall",) * 4).finalize()
    with pytest.raises(HybridsimError, match="pairs"):
        GridFluid3DBuilder(cell_count=(4, 4, 4), boundary=("periodic", "wall", "wall", "wall", "wall", "wall")).finalize()
    with pytest.raises(HybridsimError, match="3 finite numbers"):
        GridFluid3DBuilder(cell_count=(4, 4, 4)).add_inflow_sphere((0.0, 1.0), 0.2, 1.0)
    with pytest.raises(HybridsimError, match="radius must be positive"):
        GridFluid3DBuilder(cell_count=(4, 4, 4)).add_obstacle_sphere((0.0, 1.0, 0.0), -0.2)
    model = plume_model(dtype=torch.float32)
    solver = SolverGridFluid3D(model, backend="warp")
    state = model.state()
    with pytest.raises(HybridsimError, match="velocity_z has shape"):
        solver.step_differentiable(type(state)(state.velocity_x, state.velocity_y, state.velocity_x, state.density),
                                   None, 0.05)


def test_cfl_warning_names_the_fix():
    model = plume_model(dtype=torch.float32)
    solver = SolverGridFluid3D(model, backend="warp")
    state = model.state()
    state.velocity_z.fill_(5.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solver.step_differentiable(state, None, 0.05)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("CFL" in m and "lower dt" in m for m in messages), messages


# ------------------------------------------------------------------ scenes and rendering
SCENE_3D = """
name = "tiny_plume3d"
backend = "warp"
precision = "float64"
[time]
fps = 24
frames = 3
substeps = 1
[camera]
position = [0.9, -1.1, 0.45]
look_at = [0.0, 0.0, 0.3]
width = 20
height = 16
[fluid]
cells = [8, 8, 10]
cell_size = 0.06
origin = [-0.24, -0.24, 0.0]
boundary = ["wall", "wall", "wall", "wall", "wall", "open"]
buoyancy = { value = 3.0, learn = true, range = [0.0, 10.0] }
opacity = 30.0
[[fluid.inflows]]
shape = "sphere"
center = [0.0, 0.0, 0.1]
radius = 0.08
rate = 6.0
[[fluid.obstacles]]
shape = "sphere"
center = [0.0, 0.0, 0.4]
radius = 0.1
"""


def test_3d_scene_checks_that_dimensions_agree():
    from hybridsim.errors import SceneError
    from hybridsim.scene import parse_scene

    spec = parse_scene(SCENE_3D, source="tiny3d.toml")
    assert spec.fluid.dimension == 3 and len(spec.fluid.boundary) == 6 and spec.fluid.inflows[0].center == (0.0, 0.0, 0.1)
    assert parse_scene(spec.to_toml()) == spec
    bad = {"center = [0.0, 0.0, 0.1]": ("center = [0.0, 0.1]", r"fluid.inflows\[0\].center"),
           'shape = "sphere"\ncenter = [0.0, 0.0, 0.4]': ('shape = "disc"\ncenter = [0.0, 0.0, 0.4]',
                                                          r"fluid.obstacles\[0\].shape"),
           "origin = [-0.24, -0.24, 0.0]": ("origin = [-0.24, 0.0]", "fluid.origin"),
           'boundary = ["wall", "wall", "wall", "wall", "wall", "open"]': ('boundary = ["wall", "wall", "wall", "open"]',
                                                                          "fluid.boundary")}
    for good, (replacement, field) in bad.items():
        with pytest.raises(SceneError, match=field) as caught:
            parse_scene(SCENE_3D.replace(good, replacement), source="tiny3d.toml")
        assert "\n" not in str(caught.value).strip()
    two_d = (SCENE_3D.replace("cells = [8, 8, 10]", "cells = [8, 10]").replace("origin = [-0.24, -0.24, 0.0]", "")
             .replace('["wall", "wall", "wall", "wall", "wall", "open"]', '"wall"'))
    with pytest.raises(SceneError, match=r"inflows\[0\].center: center has 3 components but cells has 2"):
        parse_scene(two_d, source="tiny2d.toml")  # a 2D grid with 3D centres


def test_3d_scene_simulates_renders_and_differentiates(tmp_path):
    from hybridsim.cli import main
    from hybridsim.render import Camera
    from hybridsim.render.fluid3d import render_fluid3d_frames
    from hybridsim.scene import parse_scene
    from hybridsim.sim.fluid import fluid_rollout
    from hybridsim.sim.world import World

    world = World(parse_scene(SCENE_3D, source="tiny3d.toml"))
    buoyancy = torch.tensor(3.0, dtype=D64, requires_grad=True)
    trajectory = fluid_rollout(world, {"fluid.buoyancy": buoyancy})
    assert trajectory.density.shape == (4, 8, 8, 10) and trajectory.velocity_z.shape == (4, 8, 8, 11)
    camera = Camera.from_spec(world.spec.camera)
    layers = render_fluid3d_frames(world, trajectory, camera, 1.0 / 24)
    assert layers["rgb"].shape == (4, 16, 20, 3) and layers["flow_forward"].shape == (4, 16, 20, 2)
    alpha = layers["alpha"].detach()
    assert float(alpha[0].max()) == 0.0 and float(alpha[-1].max()) > 0.2  # smoke appears
    segmentation = layers["segmentation"][-1]
    assert bool((segmentation == 1).any()) and bool((segmentation == 2).any())  # the obstacle and the smoke
    obstacle_depth = layers["depth"][0][layers["segmentation"][0] == 1]
    assert bool(torch.isfinite(obstacle_depth).all())
    assert float(layers["flow_forward"][-2].detach().abs().max()) > 0.0
    layers["rgb"][-1].sum().backward()
    assert buoyancy.grad is not None and float(buoyancy.grad.abs()) > 0.0
    # the CLI writes the video, layers, flow video and states
    scene_path = tmp_path / "tiny3d.toml"
    scene_path.write_text(SCENE_3D)
    assert main(["render", str(scene_path), "-o", str(tmp_path / "plume.mp4"), "--quiet"]) == 0
    for suffix in (".mp4", ".layers.npz", ".flow.mp4", ".states.npz"):
        assert (tmp_path / f"plume{suffix}").is_file()
    states = np.load(tmp_path / "plume.states.npz")
    assert states["velocity_z"].shape == (4, 8, 8, 11)


def test_3d_scene_with_temperature_rolls_out_with_a_temperature_field():
    from hybridsim.scene import parse_scene
    from hybridsim.sim.fluid import fluid_rollout
    from hybridsim.sim.world import World

    text = (SCENE_3D.replace("buoyancy = { value = 3.0, learn = true, range = [0.0, 10.0] }\n", "")
            .replace("rate = 6.0", "rate = 6.0\ntemperature = { value = 2.0, learn = true, range = [0.0, 5.0] }")
            + "[fluid.temperature]\nambient = 0.5\nbuoyancy = { value = 1.5, learn = true, range = [0.0, 5.0] }\n"
              "cooling = 0.2\ndensity_weight = 0.1\n")
    world = World(parse_scene(text, source="hot3d.toml"))
    assert {"fluid.temperature.buoyancy", "fluid.inflows[0].temperature"} <= set(world.spec.learnable)
    lift = torch.tensor(1.5, dtype=D64, requires_grad=True)
    trajectory = fluid_rollout(world, {"fluid.temperature.buoyancy": lift})
    assert trajectory.temperature.shape == (4, 8, 8, 10) and float(trajectory.temperature[-1].detach().max()) > 0.6
    trajectory.velocity_z[-1].pow(2).sum().backward()
    assert float(lift.grad) > 0.0


def test_shipped_plume3d_scene_loads():
    from importlib.resources import files

    from hybridsim.scene import load_scene

    spec = load_scene(str(files("hybridsim.scenes") / "plume3d_sphere.toml"))
    assert spec.fluid.dimension == 3 and spec.fluid.obstacles[0].shape == "sphere"
    assert {"fluid.buoyancy", "fluid.inflows[0].center", "fluid.inflows[0].rate"} <= set(spec.learnable)
    assert spec.learnable["fluid.inflows[0].center"].size == 3


@pytest.mark.parametrize("backend", ["warp", pytest.param("taichi", marks=pytest.mark.slow)])
def test_every_differentiable_kernel_passes_gradcheck(backend):
    """Each kernel phase's adjoint (Warp adjoint launch / Taichi kernel.grad) against central differences."""
    from hybridsim.solvers.grid_fluid.autograd import KernelPhase, kernel_phase
    from hybridsim.solvers.grid_fluid.launch import launcher_for

    launcher = launcher_for(backend, "cpu", D64, 3)
    n = (4, 3, 5)
    flags = 1 << 1 | 1 << 7  # periodic y, no-slip floor
    faces = [(5, 3, 5), (4, 3, 5), (4, 3, 6)]
    generator = torch.Generator().manual_seed(3)
    rand = lambda *shape: torch.rand(shape, generator=generator, dtype=D64) - 0.5  # noqa: E731
    u, v, w = (rand(*s) * 0.3 for s in faces)
    q = rand(*n) + 1.0
    masks = [torch.ones(s, dtype=D64) for s in faces]
    areas = [0.5 + rand(*s).abs() for s in faces]
    grid = (0.1, 0.05, flags, *n)
    cases = {
        "advect_scalar": (n, grid, [n], [q, u, v, w]),
        "advect_velocity": (tuple(c + 1 for c in n), grid, faces, [u, v, w, u, v, w, *masks]),
        "correct_scalar": (n, grid, [n], [q, q + 0.1 * rand(*n), q + 0.1 * rand(*n), u, v, w]),
        "advect_conservative": (n, grid, [n], [q, u, v, w, *areas]),
        "add_buoyancy": (tuple(c + 1 for c in n), (0.0, 0.0, 1.0, 0.05, flags, *n), faces,
                         [u, v, w, q, rand(*faces[0]), rand(*faces[1]), rand(*faces[2]), torch.tensor([1.3], dtype=D64)]),
        "curl": (n, (0.1, flags, *n), [n] * 3, [u, v, w]),
        "confine_vorticity": (tuple(c + 1 for c in n), grid[:1] + grid[1:], faces,
                              [u, v, w, rand(*n), rand(*n), rand(*n), torch.tensor([0.4], dtype=D64)]),
        ("add_inflow", 2): (n, (0.1, 0.05), [n], [q, torch.tensor([[0.21, 0.137, 0.19], [0.112, 0.093, 0.31]], dtype=D64),
                                                 torch.tensor([[0.12] * 3, [0.1, 0.08, 0.15]], dtype=D64),
                                                 torch.tensor([2.0, 1.0], dtype=D64), torch.tensor([0.0, 1.0], dtype=D64)]),
    }
    for kernel, (dim, scalars, outputs, inputs) in cases.items():
        phase = KernelPhase(launcher, kernel, dim, tuple(scalars), tuple(outputs))
        inputs = [t.clone().requires_grad_(True) for t in inputs]
        if kernel in ("advect_velocity", "advect_conservative"):  # masks are 0/1 selectors, no gradient
            inputs = inputs[:6] + [t.detach() for t in inputs[6:]] if kernel == "advect_velocity" else inputs
        try:
            torch.autograd.gradcheck(lambda *x: kernel_phase(phase, *x), inputs, eps=1e-6, atol=1e-6)
        except RuntimeError as error:  # GradcheckError
            raise AssertionError(f"{kernel}: {str(error)[:300]}") from None


# ------------------------------------------------------------------ temperature
def heat_model(*, dtype=D64, cooling=0.5, temperature=1.5, rate=0.0, obstacle=True):
    builder = GridFluid3DBuilder(cell_count=(8, 8, 10), cell_size=0.1, origin=(-0.4, -0.4, 0.0), boundary="wall",
                                 buoyancy=0.0, temperature_buoyancy=2.0, ambient_temperature=0.3, cooling_rate=cooling)
    builder.add_inflow_sphere((0.0, 0.0, 0.2), 0.17, rate, temperature=temperature)
    if obstacle:
        builder.add_obstacle_sphere((0.02, -0.013, 0.6), 0.19)
    return builder.finalize(dtype=dtype)


def test_heat_rises_and_cools_at_the_exact_rate():
    model = heat_model()
    solver = SolverGridFluid3D(model, backend="warp", advection="maccormack", density_advection="conservative")
    state = model.state()
    assert float((state.temperature - 0.3).abs().max()) == 0.0
    for _ in range(6):
        state = solver.step_differentiable(state, None, 0.05)
    assert float(state.density.abs().max()) == 0.0 and float(state.velocity_z.max()) > 0.01  # lift without smoke
    # no sources in a closed box: conservative transport keeps sum(T - ambient), cooling scales it by exp(-k dt)
    quiet = heat_model(temperature=None)
    quiet_solver = SolverGridFluid3D(quiet, backend="warp", density_advection="conservative")
    hot = type(state)(*state.tensors(), temperature=state.temperature.clone())
    excess = float((hot.temperature - 0.3).sum())
    for _ in range(5):
        hot = quiet_solver.step_differentiable(hot, None, 0.05)
    expected = excess * torch.exp(torch.tensor(-0.5 * 0.25, dtype=D64))
    assert abs(float((hot.temperature - 0.3).sum()) - float(expected)) < 1e-11 * abs(excess)


def test_warp_and_taichi_agree_with_temperature():
    states = []
    for backend in BACKENDS:
        model = heat_model(rate=1.0)
        solver = SolverGridFluid3D(model, backend=backend, advection="maccormack", density_advection="maccormack")
        trajectory = rollout_grid_fluid3d(model, model.state(), 4, dt=0.05, solver=solver)
        states.append(trajectory.state(-1))
    for x, y in zip((*states[0].tensors(), states[0].temperature), (*states[1].tensors(), states[1].temperature)):
        assert float((x - y).abs().max()) <= 1e-9 * max(1.0, float(x.abs().max()))


def test_temperature_gradients_match_finite_differences():
    names = ("temperature_buoyancy", "cooling_rate", "inflow_temperature")

    def loss(model):
        solver = SolverGridFluid3D(model, backend="warp", density_advection="conservative")
        final = rollout_grid_fluid3d(model, model.state(), 4, dt=0.05, solver=solver).state(-1)
        return (final.velocity_z ** 2).sum() + 0.1 * (final.temperature ** 2).sum()

    model = heat_model()
    for name in names:
        getattr(model, name).requires_grad_(True)
    loss(model).backward()
    for name in names:
        values = []
        for sign in (1.0, -1.0):
            probe = heat_model()
            with torch.no_grad():
                getattr(probe, name)[0] += sign * 1e-6
            values.append(float(loss(probe)))
        numeric = (values[0] - values[1]) / 2e-6
        analytic = float(getattr(model, name).grad[0])
        assert abs(numeric) > 1e-6 and abs(analytic - numeric) < 1e-5 * abs(numeric), (name, analytic, numeric)
