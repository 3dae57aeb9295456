"""Two-way coupling of the 2D grid fluid with rigid bodies (hybridsim.sim.fluid_rigid)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsim.errors import SceneError
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.fluid_rigid import FluidRigidSolver, _planar, body_momentum, fluid_momentum
from hybridsim.sim.rigid import rigid_initial_state
from hybridsim.sim.world import World
from hybridsim.solvers.grid_fluid import (GridFluidBuilder, GridFluidControl, body_impulses, project_with_pressure)
from hybridsim.solvers.rigid import RigidBuilder

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def _system(*, cells=24, boundary="periodic", velocity=(0.4, 0.0, 0.1), body_density=10.0, fluid_density=1.0,
            backend="warp", box=True, buoyancy=0.0, inflow=False, spin=0.0, half=(0.1, 0.1, 0.08), height=0.55,
            **options):
    builder = GridFluidBuilder(cell_count=(cells, cells), cell_size=1.0 / cells, boundary=boundary, buoyancy=buoyancy)
    if inflow:
        builder.add_inflow_disc((0.5, 0.25), 0.12, 3.0)
    fluid = builder.finalize(dtype=F64)
    rigid = RigidBuilder(gravity=(0.0, 0.0, 0.0), ground=False)
    body = rigid.add_body(position=(0.5, 0.0, height), velocity=velocity, angular_velocity=(0.0, spin, 0.0))
    if box:
        rigid.add_shape_box(body, half, density=body_density)
    else:
        rigid.add_shape_sphere(body, 0.1, density=body_density)
    rigid_model = rigid.finalize(dtype=F64)
    solver = FluidRigidSolver(fluid, rigid_model, density=fluid_density, backend=backend, dtype=F64, **options)
    return solver, fluid.state(), _planar(rigid_initial_state(rigid_model))


def _total(solver, fluid_state, rigid_state):
    return fluid_momentum(solver, fluid_state, rigid_state=rigid_state) + body_momentum(solver, rigid_state)


@pytest.mark.parametrize("box", [True, False])
def test_projection_impulse_balances_fluid_momentum_exactly(box):
    # the pressure impulse on the body is minus the A-weighted momentum the projection gives the fluid
    solver, _, rigid_state = _system(box=box, spin=1.5)
    bodies = solver.fluid_bodies(rigid_state)
    geometry = solver.fluid.body_geometry(0.0, bodies)
    generator = torch.Generator().manual_seed(0)
    model = solver.fluid.model
    u = torch.randn(model.face_shape_x, generator=generator, dtype=F64)
    v = torch.randn(model.face_shape_y, generator=generator, dtype=F64)
    u_new, v_new, pressure = project_with_pressure(geometry.projection, u, v, *geometry.solid)
    linear, _ = body_impulses(model, geometry, pressure, bodies, density=1.0)
    dx = model.cell_size
    fluid_change = dx * dx * torch.stack([(geometry.area_x * (u_new - u)).sum(), (geometry.area_y * (v_new - v)).sum()])
    scale = dx * dx * (u.abs().sum() + v.abs().sum())
    assert float((fluid_change + linear[0]).abs().max()) < 1e-9 * float(scale)
    assert float(linear.abs().max()) > 1e-4 * float(scale)  # not trivially zero


def test_moving_body_face_fluxes_are_divergence_free():
    solver, fluid_state, rigid_state = _system(spin=2.0)
    for _ in range(3):
        fluid_state, rigid_state = solver.step(fluid_state, rigid_state, 0.01)
    geometry = solver.last_geometry  # the end-of-step cut the last projection used
    projection = geometry.projection
    assert projection.last_result.converged
    open_part = projection.divergence(fluid_state.velocity_x, fluid_state.velocity_y)
    composite = open_part + projection.solid_divergence(*geometry.solid)
    speed = 0.4 / solver.fluid.model.cell_size  # |u| / dx: the scale of a divergence here
    assert float(open_part.abs().max()) > 1e-2 * speed  # the body's faces carry flux: not trivially zero
    assert float(composite.abs().max()) < 1e-7 * speed


def test_drag_opposes_motion_and_momentum_is_exchanged():
    solver, fluid_state, rigid_state = _system()
    start = _total(solver, fluid_state, rigid_state)
    initial = rigid_state.body_velocity[0].clone()
    impulse = torch.zeros(3, dtype=F64)
    for step in range(20):
        fluid_state, rigid_state = solver.step(fluid_state, rigid_state, 0.01)
        impulse = impulse + solver.last_force[0] * 0.01
        if step == 0:  # the impulsive start: the body sets the fluid moving and is held back
            assert float((solver.last_force[0] * initial).sum()) < 0.0
    # over the run the fluid takes momentum from the body (single steps may push it on: the fluid it
    # carries along, its added mass, pushes a decelerating body forwards)
    assert float((impulse * initial).sum()) < 0.0
    assert float(rigid_state.body_velocity[0, 0]) < 0.95 * float(initial[0])
    # periodic, no gravity: fluid + body momentum is exchanged exactly by every projection; what
    # drifts comes from semi-Lagrangian advection (not momentum conserving) and re-cut faces. Measured
    # 0.9 % of |P0| after 20 steps, Warp and Taichi alike (docs/grid_fluid.md); 2 % leaves twice that.
    end = _total(solver, fluid_state, rigid_state)
    assert float((end - start).norm()) < 0.02 * float(start.norm())
    assert float(fluid_momentum(solver, fluid_state, rigid_state=rigid_state).norm()) > 0.05 * float(start.norm())


@pytest.mark.parametrize("height, half_z, tolerance", [(13.5 / 24, 1.0 / 12, 1e-9), (0.55, 0.08, 0.05)])
def test_archimedes_lift_on_a_body_at_rest(height, half_z, tolerance):
    # gravity g on the fluid of a closed box: the projection's hydrostatic pressure lifts the body by
    # rho g A dt per step, A = 0.2 m x 2 half_z. Pressure lives at cell centres, so the lift sees the
    # height between the centres of the first fluid cells below and above the body: exact when the
    # body's top and bottom lie on cell centres, else within one cell (3.84 -> 4 cells here: 4 %)
    solver, fluid_state, rigid_state = _system(boundary="wall", velocity=(0.0, 0.0, 0.0), height=height,
                                               half=(0.1, 0.1, half_z))
    model, g, dt = solver.fluid.model, 9.81, 0.01
    control = GridFluidControl(acceleration_y=torch.full(model.face_shape_y, -g, dtype=F64))
    bodies = solver.fluid_bodies(rigid_state)
    _, pressure, geometry = solver.fluid.step_with_bodies(fluid_state, control, dt, bodies, bodies)
    linear, angular = body_impulses(model, geometry, pressure, bodies, density=1000.0)
    expected = 1000.0 * g * dt * 0.2 * 2.0 * half_z
    assert float(linear[0, 1]) == pytest.approx(expected, rel=tolerance)
    assert abs(float(linear[0, 0])) < 1e-6 * expected
    assert abs(float(angular[0])) < 1e-6 * expected


def test_warp_and_taichi_agree():
    results = []
    for backend in ("warp", "taichi"):
        solver, fluid_state, rigid_state = _system(backend=backend, spin=1.0, buoyancy=1.0, inflow=True)
        for _ in range(5):
            fluid_state, rigid_state = solver.step(fluid_state, rigid_state, 0.01)
        results.append((fluid_state.velocity_x, fluid_state.density, rigid_state.body_velocity,
                        rigid_state.body_angular_velocity))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


class _ReplayedGeometry(FluidRigidSolver):
    """Replays the bodies' poses of a recorded run, detached (velocities stay live): the geometry is
    then constant, which isolates the gradient paths through the bodies' velocities and the loads."""

    poses: list | None = None
    recorded: list

    def fluid_bodies(self, rigid_state, ahead=0.0):
        bodies = super().fluid_bodies(rigid_state, ahead)
        if self.poses is None:
            self.recorded.append([(b.center.detach(), b.angle.detach()) for b in bodies])
            return bodies
        poses = self.poses.pop(0)
        return [dataclasses.replace(b, center=c, angle=a) for b, (c, a) in zip(bodies, poses)]


def test_gradients_with_replayed_geometry_match_finite_differences():
    solver, fluid_state0, rigid_state0 = _system(cells=12, boundary="wall", buoyancy=2.0, inflow=True, spin=0.5,
                                                 velocity=(0.3, 0.0, 0.2), body_density=5.0)
    solver.__class__ = _ReplayedGeometry
    solver.recorded = []
    weights = torch.randn(solver.fluid.model.face_shape_x, generator=torch.Generator().manual_seed(1), dtype=F64)

    def loss(velocity_x, buoyancy, replay):
        solver.poses = [list(p) for p in replay] if replay is not None else None
        solver.fluid.model.buoyancy = buoyancy.reshape(1)
        fluid_state = fluid_state0
        rigid_state = dataclasses.replace(rigid_state0, body_velocity=torch.stack(
            [torch.stack([velocity_x, rigid_state0.body_velocity[0, 1], rigid_state0.body_velocity[0, 2]])]))
        for _ in range(4):
            fluid_state, rigid_state = solver.step(fluid_state, rigid_state, 0.02)
        return (rigid_state.body_velocity[0, 0] + 2.0 * rigid_state.body_velocity[0, 2]
                + 0.5 * rigid_state.body_angular_velocity[0, 1] + (weights * fluid_state.velocity_x).sum())

    velocity_x = torch.tensor(0.3, dtype=F64, requires_grad=True)
    buoyancy = torch.tensor(2.0, dtype=F64, requires_grad=True)
    with torch.no_grad():
        loss(velocity_x, buoyancy, None)  # records the poses
    replay = list(solver.recorded)
    grads = torch.autograd.grad(loss(velocity_x, buoyancy, replay), (velocity_x, buoyancy))
    eps = 1e-6
    with torch.no_grad():
        for index, analytic in enumerate(grads):
            args = [velocity_x.detach(), buoyancy.detach()]
            plus = list(args)
            plus[index] = plus[index] + eps
            minus = list(args)
            minus[index] = minus[index] - eps
            numeric = (loss(*plus, replay) - loss(*minus, replay)) / (2 * eps)
            assert float(analytic) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)
            assert abs(float(analytic)) > 1e-4


@pytest.mark.parametrize("backend, box, density_advection", [
    ("warp", True, None), ("warp", False, "conservative"), ("taichi", True, "conservative")])
def test_gradients_through_moving_body_poses_match_finite_differences(backend, box, density_advection):
    """The full coupled gradient, the geometry included: over 6 steps of 0.05 s the body moves about
    0.9 cells across and 0.55 cells up while spinning, so the faces it cuts and their solid
    velocities change with its initial velocity (with the poses treated as constants the gradient
    was 28 % off). Float64 central differences (h = 1e-6) on the body's initial x-velocity, the
    buoyancy and the fluid's density. A fraction is piecewise smooth in the pose (kinks where the
    outline passes a face's end, jumps where a box side parallel to a face crosses its line): here
    the outline stays at least 2e-4 cells (box) and 6e-4 cells (disc) from those places at every
    step's start and end pose, far beyond the ~4e-6 cells a perturbation of 1e-6 moves it. Measured
    relative errors 1e-9 to 7e-8 (Warp and Taichi)."""
    options = {} if density_advection is None else dict(density_advection=density_advection)
    solver, fluid_state0, rigid_state0 = _system(cells=12, boundary="wall", buoyancy=2.0, inflow=True, spin=0.5,
                                                 velocity=(0.3, 0.0, 0.2), body_density=5.0, box=box,
                                                 backend=backend, **options)
    weights = torch.randn(solver.fluid.model.face_shape_x, generator=torch.Generator().manual_seed(1), dtype=F64)

    def loss(velocity_x, buoyancy, density):
        solver.fluid.model.buoyancy = buoyancy.reshape(1)
        solver.density = density
        fluid_state = fluid_state0
        rigid_state = dataclasses.replace(rigid_state0, body_velocity=torch.stack(
            [torch.stack([velocity_x, rigid_state0.body_velocity[0, 1], rigid_state0.body_velocity[0, 2]])]))
        for _ in range(6):
            fluid_state, rigid_state = solver.step(fluid_state, rigid_state, 0.05)
        value = (rigid_state.body_velocity[0, 0] + 2.0 * rigid_state.body_velocity[0, 2]
                 + 0.5 * rigid_state.body_angular_velocity[0, 1] + 3.0 * rigid_state.body_position[0, 0]
                 + (weights * fluid_state.velocity_x).sum() + (fluid_state.density ** 2).sum())
        return value, rigid_state

    params = [torch.tensor(value, dtype=F64, requires_grad=True) for value in (0.3, 2.0, 1.0)]
    value, rigid_state = loss(*params)
    moved = (rigid_state.body_position[0] - rigid_state0.body_position[0]).detach() / solver.fluid.model.cell_size
    assert float(moved[0]) > 0.5 and float(moved[2]) > 0.3  # several tenths of a cell: the cut faces change
    grads = torch.autograd.grad(value, params)
    eps = 1e-6
    with torch.no_grad():
        for index, analytic in enumerate(grads):
            plus = [p.detach().clone() for p in params]
            minus = [p.detach().clone() for p in params]
            plus[index] += eps
            minus[index] -= eps
            numeric = (float(loss(*plus)[0]) - float(loss(*minus)[0])) / (2 * eps)
            assert abs(float(analytic) - numeric) <= 1e-5 * abs(numeric), (index, float(analytic), numeric)
            assert abs(numeric) > 1e-3


SCENE = """
name = "tiny_fluid_bodies"
backend = "warp"
precision = "float64"
gravity = [0.0, 0.0, -9.81]
[time]
fps = 30
frames = 2
substeps = 4
[camera]
position = [0.3, -2.0, 0.3]
look_at = [0.3, 0.0, 0.3]
up = [0.0, 0.0, 1.0]
projection = "orthographic"
ortho_height = 0.6
width = 24
height = 24
[ground]
enabled = false
[fluid]
cells = [24, 24]
cell_size = 0.025
boundary = "wall"
density = {density}
[[fluid.inflows]]
center = [0.3, 0.1]
radius = 0.05
rate = 2.0
[[objects]]
type = "{kind}"
name = "thing"
position = [0.2, {y}, 0.35]
{size}
velocity = [1.0, 0.0, 0.0]
density = 500.0
color = [0.9, 0.1, 0.1]
"""


def _scene(kind="box", y=0.0, density=1.2):
    size = {"box": "half_extents = [0.05, 0.05, 0.04]", "sphere": "radius = 0.05",
            "capsule": "radius = 0.03\nhalf_height = 0.05"}[kind]
    return parse_scene(SCENE.format(kind=kind, y=y, size=size, density=density), source="tiny.toml")


def test_scene_loads_and_simulates():
    from hybridsim.sim.fluid_rigid import fluid_rigid_rollout

    for kind in ("box", "sphere"):
        world = World(_scene(kind))
        assert world.fluid_rigid
        with torch.no_grad():
            trajectory = fluid_rigid_rollout(world)
        assert trajectory.fluid.density.shape == (3, 24, 24)
        assert trajectory.rigid.positions.shape == (3, 1, 3)
        assert float(trajectory.rigid.positions[-1, 0, 0]) > 0.2 + 0.5 / 30  # it moved on, in x
        assert float(trajectory.rigid.positions[-1, 0, 1]) == 0.0


def test_scene_refusals_name_the_field():
    with pytest.raises(SceneError) as error:
        World(_scene("capsule"))
    assert error.value.field == "objects[0].type"
    with pytest.raises(SceneError) as error:
        World(_scene("box", y=0.1))
    assert error.value.field == "objects[0].position"
    with pytest.raises(SceneError) as error:
        _scene("box", density=-1.0)
    assert "density" in str(error.value.field)


def test_shipped_scene_renders(tmp_path):
    from hybridsim.render.fluid_rigid import write_fluid_rigid_outputs

    spec = load_scene(str(ROOT / "scenes" / "plume_pushed.toml"))
    world = World(spec)
    out = tmp_path / "plume_pushed.mp4"
    assert write_fluid_rigid_outputs(world, 2, out, quiet=True) == 0
    layers = np.load(out.with_suffix(".layers.npz"))
    segmentation = layers["segmentation"]
    assert segmentation.shape[0] == 3
    assert (segmentation == 2).sum() > 20  # the box (object 0) is drawn
    states = np.load(out.with_suffix(".states.npz"))
    assert states["body_position"].shape == (3, 1, 3)
    assert math.isfinite(float(states["density"].sum()))


def test_prescribed_obstacles_cut_the_same_faces_without_bodies():
    builder = GridFluidBuilder(cell_count=(20, 16), cell_size=0.05, boundary="wall")
    builder.add_obstacle_box((0.4, 0.4), (0.12, 0.07), velocity=(0.3, -0.1), angular_velocity=1.3, angle=0.2)
    builder.add_obstacle_disc((0.7, 0.3), 0.08)
    model = builder.finalize(dtype=F64)
    from hybridsim.solvers.grid_fluid import body_face_geometry

    for time in (0.0, 0.37):
        cut = body_face_geometry(model, time, [])
        for a, b in zip((cut.area_x, cut.area_y, cut.solid_x, cut.solid_y), model.obstacle_faces(time)):
            assert torch.equal(a, b)
        assert int((cut.owner_x >= 0).sum()) == 0


def test_a_spinning_box_is_braked():
    # the box sets the fluid around it turning: the first step's torque (world y) opposes its spin
    solver, fluid_state, rigid_state = _system(velocity=(0.0, 0.0, 0.0), spin=3.0)
    fluid_state, rigid_state = solver.step(fluid_state, rigid_state, 0.01)
    assert float(solver.last_torque[0, 1]) < 0.0
    assert abs(float(solver.last_torque[0, 0])) == 0.0 and abs(float(solver.last_torque[0, 2])) == 0.0
    assert float(rigid_state.body_angular_velocity[0, 1]) < 3.0


def test_the_plain_fluid_rollout_refuses_a_scene_with_bodies():
    from hybridsim.sim.fluid import fluid_rollout

    with pytest.raises(SceneError, match="fluid_rigid_rollout") as error:
        fluid_rollout(World(_scene("box")))
    assert error.value.field == "objects"


def test_scene_gradients_with_and_without_checkpointing_agree():
    from hybridsim.sim.fluid_rigid import fluid_rigid_rollout

    text = SCENE.format(kind="box", y=0.0, size="half_extents = [0.05, 0.05, 0.04]", density=1.2).replace(
        "velocity = [1.0, 0.0, 0.0]", "velocity = { value = [1.0, 0.0, 0.0], learn = true, range = [-3.0, 3.0] }")
    world = World(parse_scene(text, source="tiny.toml"))
    grads = []
    for checkpoint in (False, True):
        params = world.parameters()
        trajectory = fluid_rigid_rollout(world, params, checkpoint=checkpoint)
        loss = trajectory.rigid.positions[-1, 0, 0] + (trajectory.fluid.velocity_x[-1] ** 2).sum()
        (grad,) = torch.autograd.grad(loss, params["objects[0].velocity"])
        grads.append(grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert float(grads[0][0]) > 0.0
