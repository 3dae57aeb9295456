"""Differentiable grid-fluid rollouts with segment checkpointing.

Each step is a chain of autograd ops (kernel phases and solves). With checkpointing, only the
states at segment boundaries are kept; a segment's steps are re-run in backward, so memory grows
as O(steps / segment + segment) instead of O(steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ...errors import SimulationError
from .model import GridFluidControl, GridFluidModel, GridFluidState
from .solver import SolverGridFluid

__all__ = ["GridFluidTrajectory", "rollout_grid_fluid", "stack_records"]

ControlFn = Callable[[int, GridFluidState], "GridFluidControl | None"]


@dataclass
class GridFluidTrajectory:
    """Recorded states of a rollout; record 0 is the initial state."""

    velocity_x: torch.Tensor
    """x-face velocities per record [m/s], shape (R, Fx, ny)."""
    velocity_y: torch.Tensor
    """y-face velocities per record [m/s], shape (R, nx, Fy)."""
    density: torch.Tensor
    """Cell densities per record [1], shape (R, nx, ny)."""
    times: torch.Tensor
    """Time of each record [s], shape (R,)."""
    temperature: torch.Tensor | None = None
    """Cell temperatures per record [K], shape (R, nx, ny); None for a model without temperature."""

    def state(self, index: int) -> GridFluidState:
        """The recorded state ``index`` (negative counts from the end)."""
        return GridFluidState(self.velocity_x[index], self.velocity_y[index], self.density[index],
                              temperature=None if self.temperature is None else self.temperature[index],
                              time=float(self.times[index]))


def rollout_grid_fluid(model: GridFluidModel, state: GridFluidState, steps: int, *, dt: float,
                       solver: SolverGridFluid | None = None, control: GridFluidControl | ControlFn | None = None,
                       record_every: int = 1, checkpoint: bool | str = "auto", segment_steps: int | None = None,
                       check: Callable | None = None, **solver_options) -> GridFluidTrajectory:
    """Run ``steps`` steps of ``dt`` seconds from ``state``; differentiable end to end.

    ``control`` is a fixed GridFluidControl or a callable ``(step, state) -> control`` (a torch
    module works: it joins the graph). ``solver`` defaults to ``SolverGridFluid(model,
    **solver_options)``. ``checkpoint="auto"`` checkpoints segments of about sqrt(steps) steps
    whenever gradients are recorded and steps >= 16. Records every ``record_every``-th state.
    ``segment_steps`` also splits an uncheckpointed rollout (same graph). ``check(first_step,
    velocity_x, velocity_y, density)``, given the records of each finished segment, may raise
    SimulationError; any SimulationError leaves with ``error.partial`` = the records so far.
    """
    solver = solver or SolverGridFluid(model, **solver_options)
    steps, record_every = int(steps), max(1, int(record_every))
    if checkpoint == "auto":
        checkpoint = torch.is_grad_enabled() and steps >= 16
    segment = (max(1, int(segment_steps)) if segment_steps else steps) if not checkpoint else \
        max(1, int(segment_steps or round(math.sqrt(steps))))
    control_at = control if callable(control) else (lambda step, current: control)

    def fields(current: GridFluidState) -> tuple:
        return (*current.tensors(), current.temperature)

    def run_segment(first: int, count: int, step_count: int, u: torch.Tensor, v: torch.Tensor,
                    rho: torch.Tensor, temperature: torch.Tensor | None):
        current = GridFluidState(u, v, rho, step_count, temperature, time0 + first * dt)
        recorded = ([], [], [], [])
        for step in range(first, first + count):
            current = solver.step_differentiable(current, control_at(step, current), dt)
            current.time = time0 + (step + 1) * dt  # not accumulated: moving obstacles sit at exact times
            if (step + 1) % record_every == 0:
                for group, tensor in zip(recorded, fields(current)):
                    group.append(tensor)
        stacked = tuple(None if tensor is None else torch.stack(group) if group else tensor.new_empty((0, *tensor.shape))
                        for group, tensor in zip(recorded, fields(current)))
        return (*fields(current), *stacked)

    current = state
    if current.temperature is None and model.has_temperature:
        current = GridFluidState(*state.tensors(), state.step_count, model.state().temperature, state.time)
    records = [[t] for t in fields(current)]
    first = 0
    time0 = float(current.time)
    try:
        while first < steps:
            count = min(segment, steps - first)
            args = (first, count, current.step_count, *fields(current))
            out = torch_checkpoint(run_segment, *args, use_reentrant=False) if checkpoint else run_segment(*args)
            if check is not None:
                check(first, *out[4:7])
            current = GridFluidState(*out[:3], step_count=current.step_count + count, temperature=out[3],
                                     time=time0 + (first + count) * dt)
            for group, stacked in zip(records, out[4:]):
                if stacked is not None:
                    group.extend(stacked.unbind(0))
            first += count
    except SimulationError as error:
        if getattr(error, "partial", None) is None:
            kept = len(records[0])
            error.partial = stack_records(GridFluidTrajectory, records,
                                          time0 + torch.arange(kept, dtype=torch.float64) * (dt * record_every),
                                          detach=True)
        raise
    times = time0 + torch.arange(0, steps + 1, record_every, dtype=torch.float64) * dt
    return stack_records(GridFluidTrajectory, records, times)


def stack_records(trajectory, records: list[list], times: torch.Tensor, *, detach: bool = False):
    """A trajectory (2D or 3D) from per-frame records: one list per field (velocities, density),
    the last the temperature (``[None, ...]`` without one); ``detach`` for a partial run's frames."""
    take = (lambda group: [t.detach() for t in group]) if detach else list  # noqa: E731
    *fields, heat = records
    return trajectory(*(torch.stack(take(group)) for group in fields), times=times,
                      temperature=None if heat[0] is None else torch.stack(take(heat)))
