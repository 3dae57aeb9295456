"""Differentiable MPM rollouts with segment checkpointing.

Each substep is a pair of autograd Functions (see solver.py). With checkpointing, segments of
whole frames run under ``torch.utils.checkpoint``: only the particle states at segment
boundaries are kept, and a segment's substeps (grids included) are recomputed in backward.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from .model import MPMControl, MPMState, check_dt
from .solver import SolverMPM

__all__ = ["MPMTrajectory", "rollout_mpm"]

ControlFn = Callable[[MPMState, float], MPMControl]
"""control(state, time [s]) -> MPMControl, called every substep (e.g. a torch module)."""


@dataclass
class MPMTrajectory:
    """Per-frame particle states of a rollout; frame 0 is the initial state."""

    positions: torch.Tensor
    """Particle positions per frame [m], shape (F+1, N, d)."""
    velocities: torch.Tensor
    """Particle velocities per frame [m/s], shape (F+1, N, d)."""
    times: torch.Tensor
    """Frame times [s], shape (F+1,)."""
    final_state: MPMState
    """The full state after the last substep."""

    @property
    def frame_count(self) -> int:
        return self.positions.shape[0]


def rollout_mpm(solver: SolverMPM, state: MPMState | None = None, *, frames: int, substeps: int, dt: float,
                control: MPMControl | ControlFn | None = None, checkpoint: bool | str = "auto",
                segment_frames: int | None = None, check_finite: bool = True, first_step: int = 0,
                warn_dt: bool = True, progress: Callable[[int], None] | None = None) -> MPMTrajectory:
    """Run ``frames`` frames of ``substeps`` substeps of ``dt`` [s] from ``state`` (default: the model's).

    Differentiable w.r.t. the state tensors, the model's material tensors and the control.
    ``checkpoint="auto"`` checkpoints segments of about sqrt(frames) frames when gradients are
    recorded and the rollout has at least 64 substeps. Non-finite values and particles leaving
    the grid raise SimulationError naming the (global) step and quantity.
    """
    model = solver.model
    state = model.state() if state is None else state
    if warn_dt:
        check_dt(model, dt)
    parameters = model.particle_parameters()
    recording = torch.is_grad_enabled()
    if checkpoint == "auto":
        checkpoint = recording and frames * substeps >= 64
    if checkpoint and segment_frames is None:
        segment_frames = max(1, round(math.sqrt(frames)))
    segment_frames = frames if not checkpoint else max(1, int(segment_frames))

    def control_at(current: MPMState, step: int):
        return control(current, step * dt) if callable(control) else control

    def run_segment(first_frame: int, count: int, *tensors):
        current = MPMState(*tensors)
        positions, velocities = [], []
        for frame in range(first_frame, first_frame + count):
            for sub in range(substeps):
                step = first_step + frame * substeps + sub
                current = solver.step_differentiable(current, control_at(current, step), dt, parameters=parameters)
            positions.append(current.particle_position)
            velocities.append(current.particle_velocity)
        return (torch.stack(positions), torch.stack(velocities), current.particle_affine,
                current.particle_deformation, current.particle_plastic_volume)

    deterministic = _deterministic_torch() if solver.deterministic else contextlib.nullcontext()
    positions, velocities = [state.particle_position], [state.particle_velocity]
    current = state
    with deterministic:
        frame = 0
        while frame < frames:
            count = min(segment_frames, frames - frame)
            args = (frame, count, *current.tensors())
            if checkpoint:
                seg_x, seg_v, affine, deformation, plastic = torch_checkpoint(run_segment, *args, use_reentrant=False)
            else:
                seg_x, seg_v, affine, deformation, plastic = run_segment(*args)
            current = MPMState(seg_x[-1], seg_v[-1], affine, deformation, plastic)
            if check_finite:
                _check_segment(solver, seg_x, seg_v, current, first_step + frame * substeps, substeps)
            positions.extend(seg_x.unbind(0))
            velocities.extend(seg_v.unbind(0))
            frame += count
            if progress is not None:
                progress(frame)
    times = torch.arange(frames + 1, dtype=torch.float64) * (substeps * dt)
    return MPMTrajectory(torch.stack(positions), torch.stack(velocities), times, current)


def _check_segment(solver: SolverMPM, seg_x, seg_v, last: MPMState, first_step: int, substeps: int):
    # find the first frame of the segment with a bad position or velocity, then let check_state name it
    grid = solver.model.grid
    x, v = seg_x.detach(), seg_v.detach()
    lower = torch.tensor(grid.lower, dtype=x.dtype, device=x.device)
    upper = torch.tensor(grid.upper, dtype=x.dtype, device=x.device)
    good = (torch.isfinite(x).flatten(1).all(dim=1) & torch.isfinite(v).flatten(1).all(dim=1)
            & ((x >= lower) & (x <= upper)).flatten(1).all(dim=1))
    if not bool(good.all()):
        offset = int((~good).nonzero()[0])
        solver.check_state(MPMState(x[offset], v[offset], None, None, None), step=first_step + (offset + 1) * substeps)
    solver.check_state(last, step=first_step + x.shape[0] * substeps)


@contextlib.contextmanager
def _deterministic_torch():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
