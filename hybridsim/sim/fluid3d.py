"""Scenes with a 3D grid fluid: ``[fluid]`` with ``cells = [nx, ny, nz]`` made into a
GridFluid3DModel, and differentiable rollouts of it recorded once per frame.

Grid (i, j, k) is world (x, y, z), z up, gravity along -z; ``fluid.origin`` is the world position
of the grid's low corner. Inflows and obstacles are spheres or axis-aligned boxes at world
centres; an obstacle with a ``velocity`` [vx, vy, vz] translates at it (prescribed; the fluid
starts at rest and the moving faces push it). ``[fluid.temperature]`` adds a temperature field as
in 2D. Learnable: buoyancy, vorticity, viscosity, the temperature values, every inflow's rate and
centre and every obstacle's centre (through its face fractions) and velocity.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..errors import SceneError, SimulationError
from .fluid import set_fluid_coefficients

__all__ = ["fluid_model3d", "fluid_rollout3d"]


def fluid_model3d(world, params: Mapping[str, torch.Tensor] | None = None):
    """A GridFluid3DModel of the scene's 3D ``[fluid]``, differentiable w.r.t. its learnable values."""
    from ..solvers.grid_fluid3d import GridFluid3DBuilder

    spec = world.spec.fluid
    heat = spec.temperature
    builder = GridFluid3DBuilder(cell_count=spec.cells, cell_size=spec.cell_size, origin=spec.origin,
                                 boundary=spec.boundary, wall_slip=spec.wall_slip,
                                 temperature_buoyancy=None if heat is None else heat.buoyancy,
                                 ambient_temperature=0.0 if heat is None else heat.ambient,
                                 cooling_rate=0.0 if heat is None else heat.cooling)
    for inflow in spec.inflows:
        if inflow.shape == "sphere":
            builder.add_inflow_sphere(inflow.center, inflow.radius, inflow.rate, temperature=inflow.temperature)
        else:
            builder.add_inflow_box(inflow.center, inflow.half_size, inflow.rate, temperature=inflow.temperature)
    for obstacle in spec.obstacles:
        if obstacle.shape == "sphere":
            builder.add_obstacle_sphere(obstacle.center, obstacle.radius, velocity=obstacle.velocity)
        else:
            builder.add_obstacle_box(obstacle.center, obstacle.half_size, velocity=obstacle.velocity)
    try:
        model = builder.finalize(dtype=world.dtype, device=world.device)
    except Exception as error:  # HybridsimError from the builder: name the scene file and table
        raise SceneError(getattr(error, "message", str(error)), file=world.spec.source,
                         field=f"fluid.{getattr(error, 'field', '') or ''}".rstrip(".")) from None
    set_fluid_coefficients(world, params, model)
    if spec.inflows:
        model.inflow_center = torch.stack([world.value(f"fluid.inflows[{i}].center", params).reshape(3)
                                           for i in range(len(spec.inflows))])
    if spec.obstacles:
        model.obstacle_center = torch.stack([world.value(f"fluid.obstacles[{i}].center", params).reshape(3)
                                             for i in range(len(spec.obstacles))])
        model.obstacle_velocity = torch.stack([world.value(f"fluid.obstacles[{i}].velocity", params).reshape(3)
                                               for i in range(len(spec.obstacles))])
        with torch.no_grad():  # the fractions where the (possibly learned) centres put the obstacles
            model.face_fraction_x, model.face_fraction_y, model.face_fraction_z = model.face_fractions()
    return model


def fluid_rollout3d(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
                    checkpoint: bool | str = "auto", progress=None, check: bool = True):
    """Simulate the scene's 3D fluid from rest for ``frames`` frames (default: the scene's); returns
    a GridFluid3DTrajectory with one record per frame (record 0 = initial state).

    With ``check`` the blow-up guard (``hybridsim.sim.guards.FluidGuard``: non-finite fields, CFL
    number above 5, total density above twice the inflow budget) runs at every frame boundary; a
    violation, or a non-finite step caught by the solver, raises SimulationError naming frame,
    substep and quantity, with ``error.partial`` the GridFluid3DTrajectory of the good frames.

    Torch runs on one CPU thread meanwhile: the solves' vector updates are too small to gain from
    more, and on a busy machine a second thread stalled them up to 25x (measured)."""
    from ..solvers.grid_fluid3d import SolverGridFluid3D, rollout_grid_fluid3d

    spec = world.spec
    frames = spec.frame_count if frames is None else int(frames)
    model = fluid_model3d(world, params)
    solver = SolverGridFluid3D(model, backend=world.backend, device=world.device, dtype=world.dtype,
                               advection=spec.fluid.advection, density_advection=spec.fluid.density_advection)
    substeps = spec.time.substeps
    steps = frames * substeps
    if checkpoint == "auto":
        checkpoint = torch.is_grad_enabled() and steps >= 16
    segment_steps = substeps * max(1, round(math.sqrt(steps) / substeps)) if checkpoint else substeps

    def control(step, state):
        if progress is not None and step % substeps == 0:
            progress(step // substeps)
        return None

    from .guards import FluidGuard, Violation, blow_up

    state = model.state()
    if model.has_moving_obstacles:  # start from rest relative to the obstacles' boundary condition
        state.velocity_x, state.velocity_y, state.velocity_z = solver.project(*state.velocities, time=0.0)
    guard = None
    if check:
        from ..data.gates import fluid_inflow_rate

        guard = FluidGuard(dt=spec.dt, cell_size=spec.fluid.cell_size, substeps=substeps, cells=spec.fluid.cells,
                           inflow_rate=fluid_inflow_rate(spec.fluid), initial_mass=float(state.density.detach().sum()))

    def check_segment(first_step, velocity_x, velocity_y, velocity_z, density):
        violation = guard.first_violation(velocity_x, velocity_y, density, velocity_z, first_step=first_step)
        if violation is not None:
            frame = first_step // substeps + violation.offset + 1
            raise blow_up(spec, violation, frame=frame, substeps=substeps, what="3D fluid simulation")

    threads = torch.get_num_threads()
    if world.device == "cpu":
        torch.set_num_threads(1)
    try:
        trajectory = rollout_grid_fluid3d(model, state, steps, dt=spec.dt, solver=solver, control=control,
                                          record_every=substeps, checkpoint=checkpoint, segment_steps=segment_steps,
                                          check=check_segment if guard else None)
    except SimulationError as error:
        partial = error.partial
        if error.frame is not None:  # the guard: records 0 .. frame-1 are good
            keep = error.frame
            if partial is not None and partial.density.shape[0] > keep:
                partial = type(partial)(partial.velocity_x[:keep], partial.velocity_y[:keep],
                                        partial.velocity_z[:keep], partial.density[:keep], partial.times[:keep],
                                        None if partial.temperature is None else partial.temperature[:keep])
            error.partial = partial
            raise
        # the solver's own per-step check (non-finite values): name the frame and substep
        step = error.step or 0
        frame, substep = (step - 1) // substeps + 1, (step - 1) % substeps + 1
        cells = "x".join(str(n) for n in spec.fluid.cells)
        violation = Violation(error.quantity or "state", f"fluid (grid {cells})",
                              f"non-finite {error.quantity or 'state'} after the step",
                              f"lower dt (raise [time] substeps from {substeps} to {4 * substeps}), the inflow rate "
                              "or the buoyancy")
        raise blow_up(spec, violation, frame=frame, substeps=substeps, substep=substep, partial=partial,
                      what="3D fluid simulation") from None
    finally:
        torch.set_num_threads(threads)
    if progress is not None:
        progress(frames)
    return trajectory
