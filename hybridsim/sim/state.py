"""Model, State and Control: plain containers of torch tensors shared by every backend.

Kernels view these tensors zero-copy (``wp.from_torch`` for Warp, external ndarrays for
Taichi), so one State type serves both backends and the torch autograd bridge. ``B`` below is
``body_count = world_count * sphere_count``: worlds are stacked along the first axis, world
``w`` owning bodies ``w*sphere_count ... (w+1)*sphere_count - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

__all__ = ["SphereModel", "State", "Control"]


@dataclass
class SphereModel:
    """Physical constants of the spheres of every world (differentiable where learnable)."""

    world_count: int
    """Number of independent worlds stepped together."""
    sphere_count: int
    """Spheres per world."""
    mass: torch.Tensor
    """Sphere masses [kg], shape (B,)."""
    radius: torch.Tensor
    """Sphere radii [m], shape (B,)."""
    restitution: torch.Tensor
    """Coefficient of restitution against the ground [1], shape (B,)."""
    gravity: torch.Tensor
    """Gravitational acceleration per body [m/s^2], shape (B, 3) (each world's, repeated)."""
    ground_height: float = 0.0
    """Height of the ground plane z = ground_height [m]."""

    @property
    def body_count(self) -> int:
        return self.world_count * self.sphere_count


@dataclass
class State:
    """Time-varying simulation state; ``step()`` reads one State and writes another."""

    sphere_position: torch.Tensor
    """Sphere centres [m], shape (B, 3)."""
    sphere_velocity: torch.Tensor
    """Sphere linear velocities [m/s], shape (B, 3)."""

    def clone(self) -> "State":
        return State(*(getattr(self, f.name).clone() for f in fields(self)))

    def detach(self) -> "State":
        return State(*(getattr(self, f.name).detach() for f in fields(self)))

    def empty_like(self) -> "State":
        return State(*(torch.empty_like(getattr(self, f.name)) for f in fields(self)))


@dataclass
class Control:
    """Inputs applied during a step: external forces (from users or a motion prior)."""

    sphere_force: torch.Tensor | None = None
    """External force on each sphere [N], shape (B, 3); None means zero."""

    def with_force(self, force: torch.Tensor) -> "Control":
        return replace(self, sphere_force=force)
