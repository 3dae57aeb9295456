"""Nuisance terms of a fit: things about a real target that are not scene physics.

* ``offset``: the target starts ``offset`` frames (fractional, 0 <= offset <= ``max_offset``) after
  the simulation does: target frame k is compared with the simulation at time (k + offset) / fps.
  The simulation runs ``ceil(max_offset)`` extra frames and the states are interpolated linearly
  between the two frames around k + offset (the fields each FitScene lists in ``time_fields``:
  centres, velocities, orientations, particle positions), so the compared image is a
  sharp render at the fractional time, not a cross-fade. Sphere, rigid and MPM scenes (a grid
  fluid's fields would cross-fade).
* ``drag`` (sphere and rigid-body scenes): air drag on every moving object, an extra force -m k v
  (``"linear"``, k [1/s]) or -m c |v| v (``"quadratic"``, c [1/m]) in every substep, v the
  object's (centre-of-mass) velocity at the start of the substep. Sphere scenes add it through the
  sphere solver's force hook (the rollout's ``motion_prior``); rigid-body scenes apply it through
  each body's centre of mass as the rigid solver's external force (``hybridsim.sim.rigid.AirDrag``,
  the ``force_hook`` of ``rigid_rollout``; checkpointed rollouts replay it), a torque-free model:
  no drag torque, no dependence on shape, orientation or spin. Grid-fluid and MPM scenes: not yet.

Both are learned with the scene's values (bounded like them: lo + (hi - lo) sigmoid(u)) and reported
apart from them (``fit.json`` "nuisance"); they are never written into ``fitted.toml`` (the scene has
no drag term, and a start offset is a property of the footage, not of the scene).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import HybridsimError
from .params import ParamSpec

__all__ = ["OFFSET", "DRAG", "DRAG_KINDS", "nuisance_specs", "split_nuisance", "drag_hook", "shift_trajectory",
           "extra_frames"]

OFFSET = "nuisance.offset_frames"
"""Start offset of the target after the simulation [frames]."""
DRAG = "nuisance.drag"
"""Air drag coefficient: [1/s] (linear) or [1/m] (quadratic)."""
DRAG_KINDS = ("linear", "quadratic")


def nuisance_specs(max_offset: float, drag: str | None, drag_max: float) -> list[ParamSpec]:
    """ParamSpecs of the active nuisance terms; each starts inside its range where the sigmoid is not
    flat (offset at half its range, drag at a tenth)."""
    specs = []
    if max_offset > 0:
        specs.append(ParamSpec(path=OFFSET, size=1, lo=0.0, hi=float(max_offset), initial=(0.5 * max_offset,)))
    if drag is not None:
        if drag not in DRAG_KINDS:
            raise HybridsimError(f"drag must be one of {', '.join(DRAG_KINDS)} (got {drag!r})", field="drag")
        if not drag_max > 0:
            raise HybridsimError(f"drag_max must be positive (got {drag_max})", field="drag_max")
        specs.append(ParamSpec(path=DRAG, size=1, lo=0.0, hi=float(drag_max), initial=(0.1 * drag_max,)))
    return specs


def split_nuisance(values: dict) -> tuple[dict, dict]:
    """(scene values, nuisance values) of a values dict."""
    scene = {k: v for k, v in values.items() if not k.startswith("nuisance.")}
    return scene, {k: v for k, v in values.items() if k.startswith("nuisance.")}


def extra_frames(max_offset: float) -> int:
    """Frames the simulation runs past the last compared one, so every offset in range is covered."""
    return int(math.ceil(max_offset - 1e-9)) if max_offset > 0 else 0


def drag_hook(world, values: dict, kind: str, coefficient: torch.Tensor):
    """Air drag for the fit scene's ``rollout(..., motion_prior=)``: for a sphere world a callable
    ``(state, time) -> force`` [N], shape (B, 3), on every sphere; for a rigid world an
    :class:`hybridsim.sim.rigid.AirDrag` (``RigidFitScene.rollout`` passes it to ``rigid_rollout``
    as its ``force_hook``: -m k v or -m c |v| v through each body's centre of mass)."""
    if getattr(world, "rigid", False):
        from ..sim.rigid import AirDrag

        return AirDrag(kind, coefficient)
    mass = world.model(values).mass.detach()

    def drag(state, time: float) -> torch.Tensor:
        velocity = state.sphere_velocity
        k = coefficient.to(velocity.dtype)
        if kind == "linear":
            acceleration = -k * velocity
        else:
            speed = torch.sqrt((velocity * velocity).sum(dim=1, keepdim=True) + 1e-12)
            acceleration = -k * speed * velocity
        return acceleration * mass.to(velocity)[:, None]

    return drag


def shift_trajectory(trajectory, offset: torch.Tensor, images: int, fields=("positions", "velocities", "times")):
    """The first ``images`` frames of a trajectory (a dataclass with a leading frame axis on ``fields``)
    sampled at frames k + offset by linear interpolation (quaternion ``orientations`` renormalised);
    ``offset`` a differentiable scalar, 0 <= offset <= the frames available past ``images``."""
    available = getattr(trajectory, fields[0]).shape[0]
    if available <= images:  # nothing to shift into (offset range 0)
        return trajectory
    whole = max(0, min(int(math.floor(float(offset.detach()))), available - images - 1))
    a, b = slice(whole, whole + images), slice(whole + 1, whole + images + 1)
    changes = {}
    for name in fields:
        x = getattr(trajectory, name)
        if x is None:
            continue
        fraction = (offset - whole).to(x.dtype).reshape(()) if x.is_floating_point() else None
        value = x[a] + fraction * (x[b] - x[a])
        if name == "orientations":
            value = value / value.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        changes[name] = value
    return dataclasses.replace(trajectory, **changes)
