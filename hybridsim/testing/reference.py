"""A vectorised numpy implementation of the sphere bounce step: an independent reference for
tests (same numerics as the kernels) and the baseline of the benchmarks."""

from __future__ import annotations

import numpy as np

__all__ = ["bounce_step_numpy"]


def bounce_step_numpy(position, velocity, force, mass, radius, restitution, gravity, ground_height, dt):
    """One step for all spheres: arrays (B, 3) and (B,), returns new (position, velocity)."""
    a = gravity + force / mass[:, None]
    contact_z = ground_height + radius
    x_free = position + velocity * dt + 0.5 * a * dt * dt
    v_free = velocity + a * dt
    hit = x_free[:, 2] < contact_z
    if not hit.any():
        return x_free, v_free
    # time of impact: gap + vz t + az t^2 / 2 = 0, smallest root in [0, dt]
    gap = position[:, 2] - contact_z
    vz, az = velocity[:, 2], a[:, 2]
    g = np.maximum(gap, 0.0)
    denom = np.maximum(np.sqrt(np.maximum(vz * vz - 2.0 * az * g, 0.0)) - vz, 1e-30)
    t = np.where(gap > 0.0, np.minimum(2.0 * g / denom, dt), 0.0)[:, None]
    xc = position + velocity * t + 0.5 * a * t * t
    vc = velocity + a * t
    vc[:, 2] = np.where(vc[:, 2] < 0.0, -restitution * vc[:, 2], vc[:, 2])
    s = dt - t
    x_hit = xc + vc * s + 0.5 * a * s * s
    v_hit = vc + a * s
    resting = x_hit[:, 2] < contact_z
    x_hit[:, 2] = np.where(resting, contact_z, x_hit[:, 2])
    v_hit[:, 2] = np.where(resting, np.maximum(v_hit[:, 2], 0.0), v_hit[:, 2])
    return np.where(hit[:, None], x_hit, x_free), np.where(hit[:, None], v_hit, v_free)
