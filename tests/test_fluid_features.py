"""Grid fluid: temperature (Boussinesq lift, cooling, heating sources, gradients) and moving
obstacles (face fractions that follow them, u.n = u_solid.n on the faces they cover, flux balance,
conservation), in the solver and from scene files."""

import math

import pytest
import torch

from hybridsim.errors import SceneError
from hybridsim.render import Camera
from hybridsim.render.fluid import render_fluid_frames
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.fluid import fluid_rollout
from hybridsim.sim.world import World
from hybridsim.solvers.grid_fluid import GridFluidBuilder, GridFluidState, SolverGridFluid, rollout_grid_fluid

F64 = torch.float64


def hot_model(*, n=(14, 14), dtype=F64, temperature_buoyancy=2.0, cooling_rate=0.7, ambient=0.3, density_weight=0.4,
              source_temperature=1.8, boundary=("wall", "wall", "wall", "open")):
    builder = GridFluidBuilder(cell_count=n, cell_size=1.0 / n[0], boundary=boundary, buoyancy=-density_weight,
                               vorticity_strength=0.3, viscosity=0.0, temperature_buoyancy=temperature_buoyancy,
                               ambient_temperature=ambient, cooling_rate=cooling_rate)
    builder.add_inflow_disc((0.45, 0.22), 0.14, 3.0, temperature=source_temperature)
    builder.add_inflow_box((0.7, 0.3), (0.08, 0.06), 1.0)  # density only
    return builder.finalize(dtype=dtype)


def moving_box_model(*, n=(24, 20), velocity=(0.7, 0.3), angular_velocity=0.0, angle=0.0, boundary="wall", dtype=F64):
    builder = GridFluidBuilder(cell_count=n, cell_size=1.0 / n[0], boundary=boundary)
    builder.add_obstacle_box((0.35, 0.4), (0.1, 0.07), velocity=velocity, angular_velocity=angular_velocity, angle=angle)
    builder.add_obstacle_disc((0.8, 0.25), 0.08)  # a static one beside it
    return builder.finalize(dtype=dtype)


# ---------------------------------------------------------------------------- temperature

def test_model_without_temperature_is_unchanged_and_zero_lift_temperature_changes_nothing():
    plain = GridFluidBuilder(cell_count=(12, 12), cell_size=1 / 12, buoyancy=2.0, vorticity_strength=0.3)
    plain.add_inflow_disc((0.5, 0.3), 0.15, 3.0)
    hot = GridFluidBuilder(cell_count=(12, 12), cell_size=1 / 12, buoyancy=2.0, vorticity_strength=0.3,
                           temperature_buoyancy=0.0, ambient_temperature=0.5)
    hot.add_inflow_disc((0.5, 0.3), 0.15, 3.0)
    models = plain.finalize(dtype=F64), hot.finalize(dtype=F64)
    assert models[0].state().temperature is None and float(models[1].state().temperature.min()) == 0.5
    finals = [rollout_grid_fluid(model, model.state(), 6, dt=0.03).state(-1) for model in models]
    assert finals[0].temperature is None
    for a, b in zip(finals[0].tensors(), finals[1].tensors()):
        assert torch.equal(a, b)
    assert torch.allclose(finals[1].temperature, torch.full_like(finals[1].temperature, 0.5), atol=1e-14)


def test_heat_lifts_without_density_buoyancy_and_cooling_decays_the_excess_exactly():
    # a heating source and no density lift: the hot fluid rises
    model = hot_model(n=(16, 20), density_weight=0.0, cooling_rate=0.0, boundary="wall")
    trajectory = rollout_grid_fluid(model, model.state(), 24, dt=0.02, record_every=8,
                                    solver=SolverGridFluid(model, density_advection="conservative"))
    _, y = model.cell_centers()
    excess = trajectory.temperature - 0.3
    heights = [float((e * y).sum() / e.sum()) for e in excess[1:]]
    assert heights[0] < heights[1] < heights[2], heights
    assert float(trajectory.velocity_y.max()) > 0.05
    # no sources, closed box, conservative transport: sum(T - ambient) decays as exp(-k t) to round-off
    model = hot_model(n=(12, 12), boundary="wall", cooling_rate=0.7)
    model.inflow_heats.zero_()
    model.inflow_rate.zero_()
    state = model.state()
    state.temperature = 0.3 + torch.rand(model.cell_count, generator=torch.Generator().manual_seed(0), dtype=F64)
    solver = SolverGridFluid(model, density_advection="conservative", advection="maccormack")
    excess0 = float((state.temperature - 0.3).sum())
    for _ in range(10):
        state = solver.step_differentiable(state, None, 0.025)
    assert float(state.velocity_y.abs().max()) > 1e-3  # the fluid really moved the heat around
    assert float((state.temperature - 0.3).sum()) == pytest.approx(excess0 * math.exp(-0.7 * 0.25), rel=1e-11)


TEMPERATURE_PARAMS = ("temperature_buoyancy", "cooling_rate", "ambient_temperature", "inflow_temperature", "buoyancy")


def _temperature_loss(model, solver, params, weights, steps=5, dt=0.03):
    for name, value in params.items():
        setattr(model, name, value)
    state = model.state()  # at rest, at the ambient temperature (a function of it)
    state = GridFluidState(state.velocity_x, state.velocity_y, state.density,
                           temperature=params["ambient_temperature"].expand(model.cell_count).clone())
    for _ in range(steps):
        state = solver.step_differentiable(state, None, dt)
    fields = (*state.tensors(), state.temperature)
    return sum((tensor * weight).sum() for tensor, weight in zip(fields, weights))


def _weights(model, seed=7):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=F64)
            for shape in (model.face_shape_x, model.face_shape_y, model.cell_count, model.cell_count)]


def _check_temperature_gradients(backend):
    model = hot_model()
    solver = SolverGridFluid(model, backend=backend, advection="maccormack", pressure_tolerance=1e-13)
    weights = _weights(model)
    base = {name: getattr(model, name).clone() for name in TEMPERATURE_PARAMS}
    params = {name: value.clone().requires_grad_(True) for name, value in base.items()}
    _temperature_loss(model, solver, params, weights).backward()
    grads = {}
    for name in TEMPERATURE_PARAMS:
        h = 1e-6 * max(1.0, abs(float(base[name].reshape(-1)[0])))
        values = []
        for sign in (1.0, -1.0):
            shifted = {key: value.clone() for key, value in base.items()}
            shifted[name].reshape(-1)[0] += sign * h
            with torch.no_grad():
                values.append(float(_temperature_loss(model, solver, shifted, weights)))
        finite_difference = (values[0] - values[1]) / (2 * h)
        autodiff = float(params[name].grad.reshape(-1)[0])
        assert abs(finite_difference) > 1e-4, name  # the loss really depends on it
        assert abs(autodiff - finite_difference) <= 1e-4 * abs(finite_difference), (name, autodiff, finite_difference)
        grads[name] = autodiff
    return grads


def test_temperature_gradients_match_central_finite_differences_warp():
    _check_temperature_gradients("warp")


@pytest.mark.slow
def test_temperature_gradients_match_central_finite_differences_taichi():
    _check_temperature_gradients("taichi")


def test_warp_and_taichi_agree_with_temperature_and_a_moving_obstacle():
    builder = GridFluidBuilder(cell_count=(16, 14), cell_size=1 / 16, boundary="wall", buoyancy=-0.2,
                               vorticity_strength=0.3, viscosity=0.001, temperature_buoyancy=2.0, cooling_rate=0.5)
    builder.add_inflow_disc((0.5, 0.2), 0.12, 2.0, temperature=1.5)
    builder.add_obstacle_box((0.3, 0.55), (0.1, 0.06), velocity=(0.5, -0.1), angular_velocity=0.8)
    model = builder.finalize(dtype=F64)
    finals = []
    for backend in ("warp", "taichi"):
        solver = SolverGridFluid(model, backend=backend, advection="maccormack", density_advection="conservative",
                                 pressure_tolerance=1e-12)
        finals.append(rollout_grid_fluid(model, model.state(), 6, dt=0.03, solver=solver).state(-1))
    for a, b in zip((*finals[0].tensors(), finals[0].temperature), (*finals[1].tensors(), finals[1].temperature)):
        assert float((a - b).abs().max()) <= 1e-9 * float(b.abs().max())


# ---------------------------------------------------------------------------- moving obstacles

@pytest.mark.parametrize("backend", ["warp", "taichi"])
@pytest.mark.parametrize("velocity,angular_velocity,angle", [((0.7, 0.3), 0.0, 0.0), ((0.4, -0.2), 1.5, 0.3)])
def test_projection_with_a_moving_box_is_divergence_free_and_balances_the_flux(backend, velocity, angular_velocity, angle):
    """Fluid at rest, a box moving through it: after projection the composite flux A u + (1 - A) u_s
    has no divergence in any cell, so the net flux through any closed curve of faces is zero; in a
    closed box the fluid flux through a vertical line across the box returns exactly what the box
    pushes through it."""
    model = moving_box_model(velocity=velocity, angular_velocity=angular_velocity, angle=angle)
    tolerance = 1e-11
    solver = SolverGridFluid(model, backend=backend, pressure_tolerance=tolerance)
    state = model.state()
    dx = model.cell_size
    for time in (0.0, 0.137):
        u, v = solver.project(state.velocity_x, state.velocity_y, time=time)
        result = solver.last_projection.last_result
        assert result.converged
        area_x, area_y, solid_x, solid_y = model.obstacle_faces(time)
        divergence = solver.divergence(u, v, time=time)
        source = solver.last_projection.solid_divergence(solid_x, solid_y)  # the box's push, per cell
        assert float(source.abs().max()) > 1.0
        assert float(divergence.abs().max()) <= 1e-9 * float(source.abs().max()), float(divergence.abs().max())
        # solid faces carry the solid's velocity, the fluid moves
        solid = solver.last_projection.mask_x == 0
        assert torch.allclose(u[solid], solid_x[solid], atol=1e-14)
        assert float(u.abs().max()) > 0.2 * max(abs(c) for c in velocity)
        # net flux out of a rectangle of cells around the box: zero
        flux_x, flux_y = area_x * u + (1 - area_x) * solid_x, area_y * v + (1 - area_y) * solid_y
        i0, i1, j0, j1 = 2, 17, 2, 16
        net = (flux_x[i1, j0:j1].sum() - flux_x[i0, j0:j1].sum() + flux_y[i0:i1, j1].sum() - flux_y[i0:i1, j0].sum()) * dx
        assert abs(float(net)) < 1e-11
        # the columns the box covers: fluid flux = -(the box's flux), whole column: zero
        covered = [i for i in range(1, model.cell_count[0]) if float(area_x[i].min()) < 1]
        assert len(covered) >= 3
        for i in covered:
            assert abs(float(flux_x[i].sum())) < 1e-11
            assert float((area_x[i] * u[i]).sum()) == pytest.approx(-float(((1 - area_x[i]) * solid_x[i]).sum()), abs=1e-11)


def test_moving_box_face_fractions_follow_it_and_a_static_scene_keeps_its_fractions():
    model = moving_box_model(velocity=(0.5, 0.0))
    dx = model.cell_size
    blocked = lambda area: float((1 - area).sum()) * dx * dx  # noqa: E731  (Riemann sum of covered area per axis)
    area_x0, *_ = model.obstacle_faces(0.0)
    area_x1, *_ = model.obstacle_faces(0.2)
    wall = (model.face_shape_x[1]) * 2 * dx * dx
    box, disc = 4 * 0.1 * 0.07, math.pi * 0.08**2
    for area in (area_x0, area_x1):
        assert blocked(area) - wall == pytest.approx(box + disc, rel=0.05)
    # the x-faces the box covers (in its rows) are those within its half width of its centre at t
    for time, area in ((0.0, area_x0), (0.2, area_x1)):
        centre = 0.35 + 0.5 * time
        covered = {i for i in range(1, 24) if float(area[i, 9]) == 0.0}
        assert covered == {i for i in range(1, 24) if abs(i * dx - centre) < 0.1}, (time, covered)
    # static obstacles: the face fractions at t = 0 are the model's own
    builder = GridFluidBuilder(cell_count=(24, 20), cell_size=1 / 24)
    builder.add_obstacle_box((0.35, 0.4), (0.1, 0.07))
    static = builder.finalize(dtype=F64)
    assert not static.has_moving_obstacles
    area_x, area_y, solid_x, _ = static.obstacle_faces(0.0)
    assert torch.allclose(area_x, static.face_fraction_x, atol=1e-14) and float(solid_x.abs().max()) == 0.0


def test_moving_box_conserves_smoke_and_keeps_uniform_smoke_uniform():
    model = moving_box_model(n=(20, 16), velocity=(0.8, 0.2), angular_velocity=1.0)
    solver = SolverGridFluid(model, advection="maccormack", density_advection="conservative", pressure_tolerance=1e-12)
    u, v = solver.project(*model.state().tensors()[:2], time=0.0)
    generator = torch.Generator().manual_seed(1)
    for density, check_uniform in ((torch.ones(model.cell_count, dtype=F64), True),
                                   (torch.rand(model.cell_count, generator=generator, dtype=F64), False)):
        state = GridFluidState(u, v, density)
        mass0 = float(density.sum())
        for _ in range(12):
            state = solver.step_differentiable(state, None, 0.02)
        assert state.time == pytest.approx(0.24)
        assert float(state.density.sum()) == pytest.approx(mass0, rel=1e-12)
        if check_uniform:  # the composite flux is divergence-free: no smoke piles up before the box
            assert float((state.density - 1).abs().max()) < 1e-8
        else:
            assert float((state.density - density).abs().max()) > 1e-2  # the box stirred it


# ---------------------------------------------------------------------------- scenes

HOT_SCENE = """
name = "hot"
backend = "warp"
precision = "float64"
[time]
fps = 30
frames = 4
substeps = 2
[camera]
position = [0.12, -2.0, 0.16]
look_at = [0.12, 0.0, 0.16]
projection = "orthographic"
ortho_height = 0.32
width = 12
height = 16
[fluid]
cells = [12, 16]
cell_size = 0.02
density_advection = "conservative"
{extra}
[[fluid.inflows]]
center = [0.12, 0.06]
radius = 0.04
rate = 3.0
{inflow}
[[fluid.obstacles]]
shape = "box"
center = [0.06, 0.2]
half_size = [0.03, 0.02]
velocity = [0.3, 0.0]
angular_velocity = 0.5
"""

TEMPERATURE_TABLE = """[fluid.temperature]
ambient = 0.2
buoyancy = { value = 3.0, learn = true, range = [0.0, 10.0] }
cooling = { value = 0.5, learn = true, range = [0.0, 5.0] }
density_weight = { value = 0.3, learn = true, range = [0.0, 2.0] }"""


def test_scene_with_temperature_and_a_moving_box_runs_renders_and_has_gradients():
    spec = parse_scene(HOT_SCENE.format(extra=TEMPERATURE_TABLE,
                                        inflow='temperature = { value = 1.5, learn = true, range = [0.0, 5.0] }'),
                       source="hot.toml")
    world = World(spec)
    model = world.fluid_model()
    assert model.has_temperature and model.has_moving_obstacles
    assert float(model.buoyancy) == pytest.approx(-0.3) and model.inflow_heats.tolist() == [1.0]
    params = {path: world.value(path).clone().requires_grad_(True) for path in spec.learnable}
    assert set(params) == {"fluid.temperature.buoyancy", "fluid.temperature.cooling",
                           "fluid.temperature.density_weight", "fluid.inflows[0].temperature"}
    trajectory = fluid_rollout(world, params)
    assert trajectory.temperature.shape == (5, 12, 16)
    camera = Camera.from_spec(spec.camera)
    layers = render_fluid_frames(camera, spec.fluid, trajectory, 1 / 30)
    (layers["rgb"][-1].sum() + trajectory.temperature[-1].sum()).backward()
    assert all(float(value.grad.abs()) > 0 for value in params.values()), {k: v.grad for k, v in params.items()}
    # the box is drawn where it is at each frame: it moves right
    box = torch.tensor(spec.fluid.obstacle_color, dtype=F64)
    columns = [torch.nonzero((layers["rgb"][f] - box).abs().sum(-1) < 1e-12)[:, 1].double().mean() for f in (0, 4)]
    assert float(columns[1] - columns[0]) == pytest.approx(0.3 * 4 / 30 / 0.02, abs=0.6)


@pytest.mark.parametrize("extra,inflow,field", [
    ("", "temperature = 1.0", "fluid.inflows[0].temperature"),
    ("buoyancy = 1.0\n" + TEMPERATURE_TABLE, "", "fluid.buoyancy"),
])
def test_bad_temperature_tables_name_the_field(extra, inflow, field):
    with pytest.raises(SceneError) as info:
        parse_scene(HOT_SCENE.format(extra=extra, inflow=inflow), source="bad.toml")
    assert field in str(info.value)


def test_shipped_plume_box_scene_loads_and_moves_its_box():
    spec = load_scene("scenes/plume_box.toml")
    world = World(spec)
    model = world.fluid_model()
    assert model.has_temperature and model.has_moving_obstacles
    assert "fluid.temperature.buoyancy" in spec.learnable and "fluid.inflows[0].temperature" in spec.learnable
    with torch.no_grad():
        trajectory = fluid_rollout(world, frames=2)
    assert torch.isfinite(trajectory.density).all() and float(trajectory.temperature[-1].max()) > 1.0
