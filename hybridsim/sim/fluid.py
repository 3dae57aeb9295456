"""Scenes with a 2D grid fluid: the ``[fluid]`` table of a scene made into a GridFluidModel, and
differentiable rollouts of it recorded once per frame.

The fluid lives in the world's x-z plane (y = 0): grid x is world x, grid y is world z, and
``fluid.origin`` is the world (x, z) of the grid's lower-left corner. Gravity points along -z,
so buoyancy lifts density upwards.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import SceneError

__all__ = ["fluid_model", "fluid_rollout", "FLUID_LEARNABLE"]

FLUID_LEARNABLE = ("fluid.buoyancy", "fluid.vorticity", "fluid.viscosity", "fluid.inflows[i].rate", "fluid.inflows[i].center")


def fluid_model(world, params: Mapping[str, torch.Tensor] | None = None):
    """A GridFluidModel of the scene's ``[fluid]``, differentiable w.r.t. the learnable coefficients
    (buoyancy, vorticity, viscosity) and each inflow's rate and centre."""
    from ..solvers.grid_fluid import GridFluidBuilder

    spec = world.spec.fluid
    if spec is None:
        raise SceneError("the scene has no [fluid] table", file=world.spec.source, field="fluid")
    origin = torch.tensor(spec.origin, dtype=world.dtype, device=world.device)
    builder = GridFluidBuilder(cell_count=spec.cells, cell_size=spec.cell_size, boundary=spec.boundary,
                               wall_slip=spec.wall_slip, gravity_direction=(0.0, -1.0))
    for index, inflow in enumerate(spec.inflows):
        center = tuple(c - o for c, o in zip(inflow.center, spec.origin))
        if inflow.shape == "disc":
            builder.add_inflow_disc(center, inflow.radius, inflow.rate)
        else:
            builder.add_inflow_box(center, inflow.half_size, inflow.rate)
    for obstacle in spec.obstacles:
        center = tuple(c - o for c, o in zip(obstacle.center, spec.origin))
        if obstacle.shape == "disc":
            builder.add_obstacle_disc(center, obstacle.radius)
        else:
            builder.add_obstacle_box(center, obstacle.half_size)
    try:
        model = builder.finalize(dtype=world.dtype, device=world.device)
    except Exception as error:  # HybridsimError from the builder: name the scene file and table
        raise SceneError(getattr(error, "message", str(error)), file=world.spec.source,
                         field=f"fluid.{getattr(error, 'field', '') or ''}".rstrip(".")) from None
    model.buoyancy = world.value("fluid.buoyancy", params).reshape(1)
    model.vorticity_strength = world.value("fluid.vorticity", params).reshape(1)
    model.viscosity = world.value("fluid.viscosity", params).reshape(1)
    if spec.inflows:
        model.inflow_rate = torch.stack([world.value(f"fluid.inflows[{i}].rate", params).reshape(())
                                         for i in range(len(spec.inflows))])
        model.inflow_center = torch.stack([world.value(f"fluid.inflows[{i}].center", params) - origin
                                           for i in range(len(spec.inflows))])
    return model


def fluid_rollout(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
                  checkpoint: bool | str = "auto", progress=None):
    """Simulate the scene's fluid from rest for ``frames`` frames (default: the scene's); returns a
    GridFluidTrajectory with one record per frame (record 0 = initial state)."""
    from ..solvers.grid_fluid import SolverGridFluid, rollout_grid_fluid

    spec = world.spec
    frames = spec.frame_count if frames is None else int(frames)
    model = fluid_model(world, params)
    solver = SolverGridFluid(model, backend=world.backend, device=world.device, dtype=world.dtype,
                             advection=spec.fluid.advection, density_advection=spec.fluid.density_advection)
    substeps = spec.time.substeps

    def control(step, state):
        if progress is not None and step % substeps == 0:
            progress(step // substeps)
        return None

    trajectory = rollout_grid_fluid(model, model.state(), frames * substeps, dt=spec.dt, solver=solver,
                                    control=control, record_every=substeps, checkpoint=checkpoint)
    if progress is not None:
        progress(frames)
    return trajectory
