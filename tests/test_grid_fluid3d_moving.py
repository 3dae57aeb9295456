"""3D grid fluid with moving obstacles: divergence against the moving faces, backend agreement,
the body pushing the fluid, gradients with respect to the obstacle's start centre and velocity,
scene validation."""

import pytest
import torch

from hybridsim.errors import HybridsimError, SceneError
from hybridsim.solvers.grid_fluid3d import GridFluid3DBuilder, SolverGridFluid3D, rollout_grid_fluid3d

D64 = torch.float64
DT = 0.02


def moving_model(*, dtype=D64, cells=(12, 12, 12), box=False, velocity=(0.8, 0.1, 0.3), buoyancy=2.0, rate=2.0,
                 boundary="wall", center=(-0.21, 0.013, 0.42)):
    n = cells[0]
    builder = GridFluid3DBuilder(cell_count=cells, cell_size=1.0 / n, origin=(-0.5, -0.5, 0.0), boundary=boundary,
                                 buoyancy=buoyancy)
    if rate:
        builder.add_inflow_sphere((0.0, 0.0, 0.15), 0.15, rate)
    if box:
        builder.add_obstacle_box(center, (0.12, 0.1, 0.09), velocity=velocity)
    else:
        builder.add_obstacle_sphere(center, 0.16, velocity=velocity)
    return builder.finalize(dtype=dtype)


def relative_divergence(solver, state):
    """max |div(A u + (1 - A) u_s)| dx / max |u| against the obstacles at the state's time."""
    divergence = solver.divergence(*state.velocities, time=state.time)
    speed = max(float(f.abs().max()) for f in state.velocities)
    return float(divergence.abs().max()) * solver.model.cell_size / speed


@pytest.mark.parametrize("box", [False, True], ids=["sphere", "box"])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (D64, 1e-9)], ids=["float32", "float64"])
def test_projection_is_divergence_free_against_the_moving_faces(dtype, bound, box):
    model = moving_model(dtype=dtype, box=box)
    assert model.has_moving_obstacles
    solver = SolverGridFluid3D(model, backend="warp")  # default pressure tolerance
    state = model.state()
    for _ in range(10):
        state = solver.step_differentiable(state, None, DT)
        assert relative_divergence(solver, state) < bound
    # the obstacle has moved: the faces it covers now are not those of time 0
    covered_now = model.obstacle_faces(state.time)[0] == 0
    assert not torch.equal(covered_now, model.face_fraction_x == 0)
    # faces entirely inside the obstacle carry its velocity
    area_x, _, _, solid_x, _, _ = model.obstacle_faces(state.time)
    inside = (area_x == 0) & (solid_x != 0)
    assert bool(inside.any())
    assert torch.allclose(state.velocity_x[inside], solid_x[inside].to(dtype))


def test_warp_and_taichi_agree_with_a_moving_obstacle():
    results = []
    for backend in ("warp", "taichi"):
        model = moving_model(cells=(8, 8, 8))
        solver = SolverGridFluid3D(model, backend=backend, advection="maccormack", density_advection="conservative")
        state = model.state()
        for _ in range(3):
            state = solver.step_differentiable(state, None, DT)
        results.append(state)
    for a, b in zip(results[0].tensors(), results[1].tensors()):
        assert float((a - b).abs().max()) <= 1e-9 * max(1.0, float(a.abs().max()))


def test_an_obstacle_moving_through_fluid_at_rest_pushes_it_along():
    momenta = []
    for sign in (1.0, -1.0):
        model = moving_model(buoyancy=0.0, rate=0.0, velocity=(sign * 0.5, 0.0, 0.0), boundary="open",
                             center=(0.0, 0.01, 0.5))
        solver = SolverGridFluid3D(model, backend="warp")
        state = model.state()
        for _ in range(5):
            state = solver.step_differentiable(state, None, DT)
        # the open faces in front of the obstacle (along its motion) and the fluid's mean velocity there
        center = (model.obstacle_center[0] + model.obstacle_velocity[0] * state.time).tolist()
        x, y, z = model.cell_centers()
        ahead = ((x - center[0]) * sign > 0.16) & ((x - center[0]) * sign < 0.32) & \
            ((y - center[1]).abs() < 0.09) & ((z - center[2]).abs() < 0.09)
        cell_u = 0.5 * (state.velocity_x[:-1] + state.velocity_x[1:])
        cell_v = 0.5 * (state.velocity_y[:, :-1] + state.velocity_y[:, 1:])
        cell_w = 0.5 * (state.velocity_z[..., :-1] + state.velocity_z[..., 1:])
        u, v, w = (float(c[ahead].mean()) for c in (cell_u, cell_v, cell_w))
        assert u * sign > 0.05, (sign, u)          # pushed along the motion ...
        assert abs(u) > 5 * max(abs(v), abs(w))  # ... and mostly along it
        momenta.append(u)
    assert abs(momenta[0] + momenta[1]) < 0.05 * abs(momenta[0])  # mirror-symmetric motion


def _moving_loss(model, steps=10):
    solver = SolverGridFluid3D(model, backend="warp", advection="maccormack", density_advection="conservative")
    final = rollout_grid_fluid3d(model, model.state(), steps, dt=DT, solver=solver).state(-1)
    x, y, z = model.cell_centers()
    weight = torch.exp(-((x - 0.05) ** 2 + (y + 0.05) ** 2 + (z - 0.45) ** 2) / 0.03)
    return (final.density * weight).sum() + 0.3 * (final.velocity_x ** 2).sum() + 0.2 * final.velocity_z.sum()


def test_gradients_with_respect_to_the_obstacles_start_and_velocity_match_finite_differences():
    model = moving_model()
    model.obstacle_center.requires_grad_(True)
    model.obstacle_velocity.requires_grad_(True)
    _moving_loss(model).backward()
    # directional derivatives along a direction with all three components (2 probes per tensor)
    direction = torch.tensor([0.6, -0.5, 0.62], dtype=D64)
    eps, errors = 1e-6, {}
    for name in ("obstacle_center", "obstacle_velocity"):
        analytic = float(getattr(model, name).grad[0] @ direction)
        values = []
        for sign in (1.0, -1.0):
            probe = moving_model()
            with torch.no_grad():
                getattr(probe, name)[0] += sign * eps * direction
            values.append(float(_moving_loss(probe)))
        errors[name] = (analytic, (values[0] - values[1]) / (2 * eps))
    for key, (analytic, numeric) in errors.items():
        assert abs(analytic - numeric) <= 1e-4 * max(abs(numeric), 1e-2), (key, errors)
    assert max(abs(n) for _, n in errors.values()) > 1e-3, errors


def test_builder_names_a_bad_velocity():
    with pytest.raises(HybridsimError) as info:
        GridFluid3DBuilder(cell_count=(4, 4, 4)).add_obstacle_sphere((0.0, 0.0, 0.0), 0.2, velocity=(1.0, 0.0))
    assert info.value.field == "obstacles[0].velocity"


SCENE = """
name = "moving3d"
[time]
fps = 24
frames = 2
substeps = 2
[camera]
position = [0.9, -1.1, 0.45]
look_at = [0.0, 0.0, 0.3]
width = 20
height = 16
[fluid]
cells = [8, 8, 8]
cell_size = 0.1
origin = [-0.4, -0.4, 0.0]
[[fluid.inflows]]
shape = "sphere"
center = [0.0, 0.0, 0.15]
radius = 0.1
rate = 2.0
[[fluid.obstacles]]
shape = "sphere"
center = [-0.15, 0.0, 0.45]
radius = 0.12
velocity = VELOCITY
"""


def test_scene_velocity_is_validated_and_reaches_the_model(tmp_path):
    from hybridsim.scene import load_scene
    from hybridsim.sim.fluid3d import fluid_model3d
    from hybridsim.sim.world import World

    bad = tmp_path / "bad.toml"
    bad.write_text(SCENE.replace("VELOCITY", "[0.5, 0.0]"))
    with pytest.raises(SceneError, match=r"fluid.obstacles\[0\].velocity"):
        load_scene(bad)
    good = tmp_path / "good.toml"
    good.write_text(SCENE.replace("VELOCITY", "{ value = [0.5, 0.0, 0.1], learn = true }"))
    world = World(load_scene(good), device="cpu", precision="float64")
    velocity = torch.tensor([[0.5, 0.0, 0.1]], dtype=D64, requires_grad=True)
    model = fluid_model3d(world, {"fluid.obstacles[0].velocity": velocity[0]})
    assert model.has_moving_obstacles and model.obstacle_pose_requires_grad
    assert torch.equal(model.obstacle_velocity.detach(), velocity.detach())


def test_scene_renders_the_obstacle_where_it_is_and_metrics_use_the_moving_faces(tmp_path):
    from hybridsim.metrics.physics import _scene_fluid3d
    from hybridsim.render.camera_io import scene_cameras
    from hybridsim.render.fluid3d import render_fluid3d_frames
    from hybridsim.scene import load_scene
    from hybridsim.sim.fluid3d import fluid_rollout3d
    from hybridsim.sim.world import World

    path = tmp_path / "moving.toml"
    path.write_text(SCENE.replace("VELOCITY", "[1.5, 0.0, 0.0]").replace('name = "moving3d"',
                                                                          'name = "moving3d"\nprecision = "float64"'))
    spec = load_scene(path)
    world = World(spec, device="cpu", precision="float64")
    with torch.no_grad():
        trajectory = fluid_rollout3d(world, frames=3)
        layers = render_fluid3d_frames(world, trajectory, scene_cameras(spec.camera, 4, spec.time.fps),
                                       1.0 / spec.time.fps)
    columns = []
    for f in range(4):
        on = layers["segmentation"][f] == 1  # obstacle 0
        assert bool(on.any())
        columns.append(float(torch.nonzero(on)[:, 1].double().mean()))
        if f < 3:  # its pixels' forward flow follows it (to the right in this view)
            assert float(layers["flow_forward"][f][on][:, 0].mean()) > 0.1
    assert columns[3] > columns[0] + 0.5, columns  # drawn where it is at each frame
    arrays = {"velocity_x": trajectory.velocity_x, "velocity_y": trajectory.velocity_y,
              "velocity_z": trajectory.velocity_z, "density": trajectory.density, "times": trajectory.times}
    metrics = _scene_fluid3d(world, lambda name: torch.as_tensor(arrays[name]))
    assert metrics["max_divergence_max_relative"] < 1e-9, metrics["divergence_max_relative"]
