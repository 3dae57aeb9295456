"""Differentiable rollouts: per-step autograd ops, grouped into checkpointed segments.

Shape of the bridge: every substep is one ``torch.autograd.Function`` (forward = kernel,
backward = the kernel's adjoint on the step's saved inputs). A rollout is a Python loop of
such steps, so torch modules called inside the loop (motion priors, controllers) join the same
graph with no special plumbing. Memory is bounded by ``torch.utils.checkpoint`` over segments
of whole frames: only segment boundaries are stored, and a segment's steps are re-run in
backward. With ``segment_frames = sqrt(frames / substeps)`` the stored states grow as
O(sqrt(steps)).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ..errors import SimulationError
from .state import Control, State

__all__ = ["Trajectory", "rollout", "MotionPrior"]

MotionPrior = Callable[[State, float], torch.Tensor]
"""A callable (typically an ``nn.Module``) mapping (state, time [s]) to extra forces [N], (B, 3)."""


@dataclass
class Trajectory:
    """Per-frame states of a rollout; frame 0 is the initial state."""

    positions: torch.Tensor
    """Sphere centres per frame [m], shape (F+1, W, N, 3)."""
    velocities: torch.Tensor
    """Sphere velocities per frame [m/s], shape (F+1, W, N, 3)."""
    times: torch.Tensor
    """Frame times [s], shape (F+1,)."""
    model: object
    """The SphereModel the rollout used (radii etc. for rendering)."""

    @property
    def frame_count(self) -> int:
        return self.positions.shape[0]

    def world(self, index: int) -> "Trajectory":
        """The trajectory of one world of the batch (keeps a world axis of length 1)."""
        return Trajectory(self.positions[:, index : index + 1], self.velocities[:, index : index + 1],
                          self.times, self.model)


def rollout(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
            motion_prior: MotionPrior | None = None, control: Control | None = None,
            checkpoint: bool | str = "auto", segment_frames: int | None = None,
            check_finite: bool = True, progress: Callable[[int], None] | None = None) -> Trajectory:
    """Simulate ``frames`` frames (default: the scene's) and return per-frame states.

    Differentiable with respect to ``params`` (from ``world.parameters()``), ``control`` forces
    and the parameters of ``motion_prior``. ``checkpoint="auto"`` checkpoints segments of about
    sqrt(frames / substeps) frames whenever gradients are being recorded. ``progress(frames_done)`` is
    called after each frame. Non-finite states raise SimulationError naming step and object.
    """
    spec = world.spec
    frames = spec.frame_count if frames is None else int(frames)
    substeps = spec.time.substeps
    dt = spec.dt
    model = world.model(params)
    solver = world.solver(model)
    state = world.initial_state(params)
    control = control or Control()
    W, N = world.world_count, world.sphere_count

    recording = torch.is_grad_enabled()
    if checkpoint == "auto":
        checkpoint = recording and frames * substeps >= 64
    if checkpoint and segment_frames is None:
        # stored states ~ frames / k (segment boundaries) + k * substeps (one segment re-run)
        segment_frames = max(1, round(math.sqrt(frames / substeps)))
    segment_frames = frames if not checkpoint else max(1, int(segment_frames))

    def run_segment(first_frame: int, count: int, position: torch.Tensor, velocity: torch.Tensor):
        current = State(position, velocity)
        positions, velocities = [], []
        for frame in range(first_frame, first_frame + count):
            for sub in range(substeps):
                step = frame * substeps + sub
                step_control = control
                if motion_prior is not None:
                    extra = motion_prior(current, step * dt)
                    base = control.sphere_force
                    step_control = control.with_force(extra if base is None else base + extra)
                current = solver.step_differentiable(current, step_control, dt)
            positions.append(current.sphere_position)
            velocities.append(current.sphere_velocity)
        return torch.stack(positions), torch.stack(velocities)

    deterministic = _deterministic_torch() if world.deterministic else contextlib.nullcontext()
    positions, velocities = [state.sphere_position], [state.sphere_velocity]
    with deterministic:
        frame = 0
        while frame < frames:
            count = min(segment_frames, frames - frame)
            if checkpoint:
                seg_pos, seg_vel = torch_checkpoint(run_segment, frame, count, positions[-1], velocities[-1],
                                                    use_reentrant=False)
            else:
                seg_pos, seg_vel = run_segment(frame, count, positions[-1], velocities[-1])
            if check_finite:
                _check_finite(world, seg_pos, seg_vel, frame, substeps)
            positions.extend(seg_pos.unbind(0))
            velocities.extend(seg_vel.unbind(0))
            frame += count
            if progress is not None:
                progress(frame)

    shape = (frames + 1, W, N, 3)
    times = torch.arange(frames + 1, dtype=world.dtype) / spec.time.fps
    return Trajectory(torch.stack(positions).reshape(shape), torch.stack(velocities).reshape(shape), times, model)


def _check_finite(world, positions: torch.Tensor, velocities: torch.Tensor, first_frame: int, substeps: int):
    for quantity, values in (("position", positions), ("velocity", velocities)):
        finite = torch.isfinite(values.detach()).all(dim=-1)  # (frames, B)
        if not bool(finite.all()):
            frame_offset, body = (~finite).nonzero()[0].tolist()
            sphere = body % max(world.sphere_count, 1)
            name = world.spheres[sphere].name if world.spheres else None
            frame = first_frame + frame_offset + 1
            raise SimulationError(
                f"non-finite {quantity} by the end of frame {frame} (world {body // max(world.sphere_count, 1)}); "
                "lower dt (more substeps) or check forces and parameters",
                file=world.spec.source, object=name, step=frame * substeps, quantity=quantity)


@contextlib.contextmanager
def _deterministic_torch():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
