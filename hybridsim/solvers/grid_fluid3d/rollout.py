"""Differentiable 3D grid-fluid rollouts with segment checkpointing (see grid_fluid/rollout.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ...errors import SimulationError
from ..grid_fluid.rollout import stack_records
from .model import GridFluid3DControl, GridFluid3DModel, GridFluid3DState
from .solver import SolverGridFluid3D

__all__ = ["GridFluid3DTrajectory", "rollout_grid_fluid3d"]


@dataclass
class GridFluid3DTrajectory:
    """Recorded states of a rollout; record 0 is the initial state."""

    velocity_x: torch.Tensor
    """x-face velocities per record [m/s], shape (R, Fx, ny, nz)."""
    velocity_y: torch.Tensor
    """y-face velocities per record [m/s], shape (R, nx, Fy, nz)."""
    velocity_z: torch.Tensor
    """z-face velocities per record [m/s], shape (R, nx, ny, Fz)."""
    density: torch.Tensor
    """Cell densities per record [1], shape (R, nx, ny, nz)."""
    times: torch.Tensor
    """Time of each record [s], shape (R,)."""
    temperature: torch.Tensor | None = None
    """Cell temperatures per record [K], shape (R, nx, ny, nz); None for a model without temperature."""

    def state(self, index: int) -> GridFluid3DState:
        """The recorded state ``index`` (negative counts from the end)."""
        return GridFluid3DState(self.velocity_x[index], self.velocity_y[index], self.velocity_z[index],
                                self.density[index], time=float(self.times[index]),
                                temperature=None if self.temperature is None else self.temperature[index])


def rollout_grid_fluid3d(model: GridFluid3DModel, state: GridFluid3DState, steps: int, *, dt: float,
                         solver: SolverGridFluid3D | None = None,
                         control: GridFluid3DControl | Callable | None = None, record_every: int = 1,
                         checkpoint: bool | str = "auto", segment_steps: int | None = None,
                         check: Callable | None = None, **solver_options) -> GridFluid3DTrajectory:
    """Run ``steps`` steps of ``dt`` seconds from ``state``; differentiable end to end. ``control``
    is fixed or ``(step, state) -> control``; ``checkpoint="auto"`` keeps only segment boundaries
    (about sqrt(steps) steps per segment) when gradients are recorded and steps >= 16.
    ``check(first_step, velocity_x, velocity_y, velocity_z, density)`` sees each segment's records
    (R, ...) and may raise SimulationError; any SimulationError leaves with ``error.partial`` = a
    GridFluid3DTrajectory of the records before the segment that failed."""
    solver = solver or SolverGridFluid3D(model, **solver_options)
    steps, record_every = int(steps), max(1, int(record_every))
    if checkpoint == "auto":
        checkpoint = torch.is_grad_enabled() and steps >= 16
    segment = max(1, int(segment_steps or round(math.sqrt(steps)))) if checkpoint else max(1, int(segment_steps or steps))
    control_at = control if callable(control) else (lambda step, current: control)
    time0 = float(state.time)

    if state.temperature is None and model.has_temperature:
        state = GridFluid3DState(*state.tensors(), state.step_count, state.time, model.state().temperature)

    def fields(current: GridFluid3DState) -> tuple:
        return (*current.tensors(), current.temperature)

    def run_segment(first: int, count: int, step_count: int, *carried):
        current = GridFluid3DState(*carried[:4], step_count, time0 + first * dt, carried[4])
        recorded = ([], [], [], [], [])
        for step in range(first, first + count):
            current = solver.step_differentiable(current, control_at(step, current), dt)
            current.time = time0 + (step + 1) * dt
            if (step + 1) % record_every == 0:
                for group, tensor in zip(recorded, fields(current)):
                    group.append(tensor)
        stacked = tuple(None if tensor is None else torch.stack(group) if group else tensor.new_empty((0, *tensor.shape))
                        for group, tensor in zip(recorded, fields(current)))
        return (*fields(current), *stacked)

    records = [[t] for t in fields(state)]
    current, first = state, 0
    try:
        while first < steps:
            count = min(segment, steps - first)
            args = (first, count, current.step_count, *fields(current))
            out = torch_checkpoint(run_segment, *args, use_reentrant=False) if checkpoint else run_segment(*args)
            if check is not None:
                check(first, *out[5:9])
            current = GridFluid3DState(*out[:4], step_count=current.step_count + count,
                                       time=time0 + (first + count) * dt, temperature=out[4])
            for group, stacked in zip(records, out[5:]):
                if stacked is not None:
                    group.extend(stacked.unbind(0))
            first += count
    except SimulationError as error:
        if getattr(error, "partial", None) is None:
            kept = len(records[0])
            error.partial = stack_records(GridFluid3DTrajectory, records,
                                          time0 + torch.arange(kept, dtype=torch.float64) * (dt * record_every),
                                          detach=True)
        raise
    times = time0 + torch.arange(0, steps + 1, record_every, dtype=torch.float64) * dt
    return stack_records(GridFluid3DTrajectory, records, times)
