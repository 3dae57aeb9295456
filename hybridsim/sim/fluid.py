"""Scenes with a 2D grid fluid: the ``[fluid]`` table of a scene made into a GridFluidModel, and
differentiable rollouts of it recorded once per frame. A ``[fluid]`` with ``cells = [nx, ny, nz]``
is a 3D fluid: both functions hand it to ``hybridsim.sim.fluid3d``.

The fluid lives in the world's x-z plane (y = 0): grid x is world x, grid y is world z, and
``fluid.origin`` is the world (x, z) of the grid's lower-left corner. Gravity points along -z,
so buoyancy lifts density upwards. ``[fluid.temperature]`` adds a temperature field (Boussinesq
lift, cooling, heating inflows); obstacles with a ``velocity`` or ``angular_velocity`` move.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..errors import SceneError, SimulationError

__all__ = ["fluid_model", "fluid_rollout", "set_fluid_coefficients", "FLUID_LEARNABLE"]

FLUID_LEARNABLE = ("fluid.buoyancy", "fluid.vorticity", "fluid.viscosity", "fluid.inflows[i].rate", "fluid.inflows[i].center",
                   "fluid.obstacles[i].center",
                   "fluid.inflows[i].temperature", "fluid.temperature.buoyancy", "fluid.temperature.ambient",
                   "fluid.temperature.cooling", "fluid.temperature.density_weight")


def fluid_model(world, params: Mapping[str, torch.Tensor] | None = None):
    """A GridFluidModel of the scene's ``[fluid]``, differentiable w.r.t. the learnable coefficients
    (buoyancy, vorticity, viscosity), each inflow's rate and centre and, in 2D, each obstacle's
    centre (its face open fractions are exact areas in torch; 3D: ``fluid_model3d``)."""
    from ..solvers.grid_fluid import GridFluidBuilder

    spec = world.spec.fluid
    if spec is None:
        raise SceneError("the scene has no [fluid] table", file=world.spec.source, field="fluid")
    if spec.dimension == 3:  # cells = [nx, ny, nz]: a smoke volume (hybridsim.sim.fluid3d)
        from .fluid3d import fluid_model3d

        return fluid_model3d(world, params)
    origin = torch.tensor(spec.origin, dtype=world.dtype, device=world.device)
    heat = spec.temperature
    builder = GridFluidBuilder(cell_count=spec.cells, cell_size=spec.cell_size, boundary=spec.boundary,
                               wall_slip=spec.wall_slip, gravity_direction=(0.0, -1.0),
                               temperature_buoyancy=None if heat is None else heat.buoyancy,
                               ambient_temperature=0.0 if heat is None else heat.ambient,
                               cooling_rate=0.0 if heat is None else heat.cooling)
    for index, inflow in enumerate(spec.inflows):
        center = tuple(c - o for c, o in zip(inflow.center, spec.origin))
        if inflow.shape == "disc":
            builder.add_inflow_disc(center, inflow.radius, inflow.rate, temperature=inflow.temperature)
        else:
            builder.add_inflow_box(center, inflow.half_size, inflow.rate, temperature=inflow.temperature)
    for obstacle in spec.obstacles:
        center = tuple(c - o for c, o in zip(obstacle.center, spec.origin))
        motion = dict(velocity=obstacle.velocity, angular_velocity=obstacle.angular_velocity)
        if obstacle.shape == "disc":
            builder.add_obstacle_disc(center, obstacle.radius, **motion)
        else:
            builder.add_obstacle_box(center, obstacle.half_size, angle=obstacle.angle, **motion)
    try:
        model = builder.finalize(dtype=world.dtype, device=world.device)
    except Exception as error:  # HybridsimError from the builder: name the scene file and table
        raise SceneError(getattr(error, "message", str(error)), file=world.spec.source,
                         field=f"fluid.{getattr(error, 'field', '') or ''}".rstrip(".")) from None
    set_fluid_coefficients(world, params, model)
    if spec.inflows:
        model.inflow_center = torch.stack([world.value(f"fluid.inflows[{i}].center", params) - origin
                                           for i in range(len(spec.inflows))])
    if spec.obstacles:  # a learned centre moves the faces the obstacle cuts (and their gradients)
        model.obstacle_center = torch.stack([world.value(f"fluid.obstacles[{i}].center", params) - origin
                                             for i in range(len(spec.obstacles))])
        with torch.no_grad():
            model.face_fraction_x, model.face_fraction_y = model.face_fractions()
    return model


def set_fluid_coefficients(world, params, model) -> None:
    """Put the scene's (possibly learned) coefficients on a 2D or 3D fluid model: buoyancy,
    vorticity, viscosity, inflow rates and, with ``[fluid.temperature]``, the Boussinesq values."""
    spec = world.spec.fluid
    model.buoyancy = world.value("fluid.buoyancy", params).reshape(1)
    if spec.temperature is not None:  # Boussinesq: the density term is the smoke's weight
        model.buoyancy = -world.value("fluid.temperature.density_weight", params).reshape(1)
        model.temperature_buoyancy = world.value("fluid.temperature.buoyancy", params).reshape(1)
        model.ambient_temperature = world.value("fluid.temperature.ambient", params).reshape(1)
        model.cooling_rate = world.value("fluid.temperature.cooling", params).reshape(1)
        if spec.inflows:
            model.inflow_temperature = torch.stack([
                world.value(f"fluid.inflows[{i}].temperature", params).reshape(()) if inflow.temperature is not None
                else model.ambient_temperature.reshape(()) for i, inflow in enumerate(spec.inflows)])
    model.vorticity_strength = world.value("fluid.vorticity", params).reshape(1)
    model.viscosity = world.value("fluid.viscosity", params).reshape(1)
    if spec.inflows:
        model.inflow_rate = torch.stack([world.value(f"fluid.inflows[{i}].rate", params).reshape(())
                                         for i in range(len(spec.inflows))])


def fluid_rollout(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
                  checkpoint: bool | str = "auto", progress=None, check: bool = True, motion_prior=None):
    """Simulate the scene's fluid from rest for ``frames`` frames (default: the scene's); returns a
    GridFluidTrajectory with one record per frame (record 0 = initial state).

    With ``check`` the blow-up guard (``hybridsim.sim.guards.FluidGuard``: non-finite fields, CFL
    number above 5) runs at every frame boundary; a violation, or a non-finite step caught by the
    solver, raises SimulationError naming frame, substep and quantity, with ``error.partial`` the
    GridFluidTrajectory of the good frames before it. ``motion_prior(step, state)`` (e.g. a
    ``hybridsim.neural.DivergenceFreeFluidPrior``) returns each step's GridFluidControl (extra
    face accelerations) and joins the autograd graph."""
    from ..solvers.grid_fluid import SolverGridFluid, rollout_grid_fluid

    spec = world.spec
    if spec.objects:  # never simulate the smoke without its bodies
        raise SceneError("this scene has [[objects]] in its fluid: simulate it with "
                         "hybridsim.sim.fluid_rigid.fluid_rigid_rollout (`render`, `metrics` and `generate` "
                         "do; `fit` does not yet)", file=spec.source, field="objects")
    if spec.fluid.dimension == 3:  # a GridFluid3DTrajectory (no motion prior in 3D yet)
        if motion_prior is not None:
            raise SceneError("a motion prior is not supported for a 3D fluid yet", file=spec.source, field="fluid.cells")
        from .fluid3d import fluid_rollout3d

        return fluid_rollout3d(world, params, frames=frames, checkpoint=checkpoint, progress=progress, check=check)
    frames = spec.frame_count if frames is None else int(frames)
    from .resources import check_scene_memory

    check_scene_memory(spec, frames=frames, grad=torch.is_grad_enabled(), precision=world.precision,
                       device=world.device, world_count=world.world_count)
    model = fluid_model(world, params)
    solver = SolverGridFluid(model, backend=world.backend, device=world.device, dtype=world.dtype,
                             advection=spec.fluid.advection, density_advection=spec.fluid.density_advection)
    substeps = spec.time.substeps
    steps = frames * substeps
    if checkpoint == "auto":
        checkpoint = torch.is_grad_enabled() and steps >= 16
    # segments of whole frames (one frame without checkpointing: the same graph, checked per frame)
    segment_steps = substeps * max(1, round(math.sqrt(steps) / substeps)) if checkpoint else substeps

    def control(step, state):
        if progress is not None and step % substeps == 0:
            progress(step // substeps)
        return motion_prior(step, state) if motion_prior is not None else None

    guard = None
    if check:
        from .guards import FluidGuard

        guard = FluidGuard(dt=spec.dt, cell_size=spec.fluid.cell_size, substeps=substeps, cells=spec.fluid.cells)

    def check_segment(first_step, velocity_x, velocity_y, density):
        violation = guard.first_violation(velocity_x, velocity_y, density)
        if violation is not None:
            from .guards import blow_up

            frame = first_step // substeps + violation.offset + 1
            raise blow_up(spec, violation, frame=frame, substeps=substeps, what="fluid simulation")

    state = model.state()
    if model.has_moving_obstacles:  # start from rest relative to the obstacles' boundary condition
        state.velocity_x, state.velocity_y = solver.project(state.velocity_x, state.velocity_y, time=0.0)
    try:
        trajectory = rollout_grid_fluid(model, state, steps, dt=spec.dt, solver=solver,
                                        control=control, record_every=substeps, checkpoint=checkpoint,
                                        segment_steps=segment_steps, check=check_segment if guard else None)
    except SimulationError as error:
        if error.frame is not None:
            keep = error.frame  # records 0 .. frame-1 are good
            partial = error.partial
            if partial is not None and partial.density.shape[0] > keep:
                partial = type(partial)(partial.velocity_x[:keep], partial.velocity_y[:keep], partial.density[:keep],
                                        partial.times[:keep],
                                        None if partial.temperature is None else partial.temperature[:keep])
            error.partial = partial
            raise
        # the solver's own per-step check (non-finite values): name the frame and substep
        from .guards import Violation, blow_up

        step = error.step or 0
        frame, substep = (step - 1) // substeps + 1, (step - 1) % substeps + 1
        cells = spec.fluid.cells
        violation = Violation(error.quantity or "state", f"fluid (grid {cells[0]}x{cells[1]})",
                              f"non-finite {error.quantity or 'state'} after the step",
                              f"lower dt (raise [time] substeps from {substeps} to {4 * substeps}), the inflow rate or "
                              "the buoyancy")
        raise blow_up(spec, violation, frame=frame, substeps=substeps, substep=substep, partial=error.partial,
                      what="fluid simulation") from None
    if progress is not None:
        progress(frames)
    return trajectory
