"""Physical plausibility of sphere trajectories: energy drift, momentum, penetration."""

from __future__ import annotations

import torch

__all__ = ["sphere_physics_metrics"]


def sphere_physics_metrics(positions: torch.Tensor, velocities: torch.Tensor, mass: torch.Tensor,
                           radius: torch.Tensor, gravity=(0.0, 0.0, -9.81), ground_height: float = 0.0) -> dict:
    """Energy and contact checks of sphere states (F, W, N, 3) with per-body mass and radius (W*N,).

    Returns ``energy_gain`` (largest rise of total mechanical energy above its initial value, J,
    per world, max over worlds; > 0 means energy was created), ``energy_drift`` (final minus initial
    energy relative to the initial, max |.| over worlds), ``penetration`` (deepest sphere-ground
    overlap, m) and ``momentum_change`` (|change of horizontal momentum|, kg m/s: the ground is
    frictionless and gravity vertical, so it should be 0).
    """
    frames, worlds, count = positions.shape[:3]
    m = mass.reshape(worlds, count).to(positions.dtype)
    r = radius.reshape(worlds, count).to(positions.dtype)
    g = torch.as_tensor(gravity, dtype=positions.dtype)
    kinetic = 0.5 * (m * velocities.pow(2).sum(-1)).sum(-1)  # (F, W)
    potential = -(m[..., None] * positions * g).sum(-1).sum(-1)
    energy = kinetic + potential
    gain = (energy - energy[0]).max(dim=0).values
    drift = (energy[-1] - energy[0]) / energy[0].abs().clamp(min=1e-12)
    penetration = (r + ground_height - positions[..., 2]).clamp(min=0.0).max()
    momentum = (m[..., None] * velocities[..., :2]).sum(-2)  # (F, W, 2)
    return {
        "energy_gain": float(gain.max()),
        "energy_drift": float(drift.abs().max()),
        "penetration": float(penetration),
        "momentum_change": float((momentum - momentum[0]).norm(dim=-1).max()),
    }
