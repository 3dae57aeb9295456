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
    called after each frame. ``check_finite`` runs the blow-up guards (``hybridsim.sim.guards``:
    non-finite state, ground penetration, energy growth without external input) at every frame
    boundary; a violation raises SimulationError naming frame, substep, object and quantity, with
    ``error.partial`` the Trajectory of the good frames before it.
    """
    spec = world.spec
    frames = spec.frame_count if frames is None else int(frames)
    from .resources import check_scene_memory

    check_scene_memory(spec, frames=frames, grad=torch.is_grad_enabled(), precision=world.precision,
                       device=world.device, world_count=world.world_count)
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
    # without checkpointing a segment is one frame (the same graph), so guards see every frame
    segment_frames = 1 if not checkpoint else max(1, int(segment_frames))
    guard = None
    if check_finite:
        from .guards import SphereGuard

        guard = SphereGuard(world, model, state.sphere_position, state.sphere_velocity,
                            external_input=motion_prior is not None or control.sphere_force is not None)

    def advance(current: State, step: int) -> State:
        step_control = control
        if motion_prior is not None:
            extra = motion_prior(current, step * dt)
            base = control.sphere_force
            step_control = control.with_force(extra if base is None else base + extra)
        return solver.step_differentiable(current, step_control, dt)

    def run_segment(first_frame: int, count: int, position: torch.Tensor, velocity: torch.Tensor):
        current = State(position, velocity)
        positions, velocities = [], []
        for frame in range(first_frame, first_frame + count):
            for sub in range(substeps):
                current = advance(current, frame * substeps + sub)
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
            if guard is not None:
                _guard_segment(guard, world, advance, positions, velocities, seg_pos, seg_vel, frame, model)
            positions.extend(seg_pos.unbind(0))
            velocities.extend(seg_vel.unbind(0))
            frame += count
            if progress is not None:
                progress(frame)

    shape = (frames + 1, W, N, 3)
    times = torch.arange(frames + 1, dtype=world.dtype) / spec.time.fps
    return Trajectory(torch.stack(positions).reshape(shape), torch.stack(velocities).reshape(shape), times, model)


def _guard_segment(guard, world, advance, positions: list, velocities: list, seg_pos: torch.Tensor,
                   seg_vel: torch.Tensor, first_frame: int, model) -> None:
    """Raise the guards' SimulationError for the first bad frame of a segment (with the substep
    found by re-running that frame, and the good frames so far as ``error.partial``)."""
    from .guards import blow_up, locate_substep

    violation = guard.first_violation(seg_pos, seg_vel)
    if violation is None:
        return
    k = violation.offset
    good_pos = [t.detach() for t in positions] + [t.detach() for t in seg_pos[:k].unbind(0)]
    good_vel = [t.detach() for t in velocities] + [t.detach() for t in seg_vel[:k].unbind(0)]
    frame = first_frame + k + 1
    substeps = world.spec.time.substeps
    first_step = (frame - 1) * substeps
    substep = locate_substep(lambda current, sub: advance(current, first_step + sub),
                             State(good_pos[-1], good_vel[-1]), substeps,
                             lambda current: guard.first_violation(current.sphere_position,
                                                                   current.sphere_velocity) is not None)
    shape = (len(good_pos), world.world_count, world.sphere_count, 3)
    times = torch.arange(len(good_pos), dtype=world.dtype) / world.spec.time.fps
    partial = Trajectory(torch.stack(good_pos).reshape(shape), torch.stack(good_vel).reshape(shape), times, model)
    raise blow_up(world.spec, violation, frame=frame, substeps=substeps, substep=substep, partial=partial)


@contextlib.contextmanager
def _deterministic_torch():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
