"""A vectorised numpy MLS-MPM substep with the kernels' numerics: an independent check of the
Warp and Taichi kernels in tests and the reference of the ``mpm_step_vs_numpy`` benchmark.

P2G is one ``np.add.at`` over all particle-node pairs; the snow projection uses
``np.linalg.svd`` (a different SVD from the kernels' Jacobi one: results agree to round-off).
"""

from __future__ import annotations

import itertools

import numpy as np

from .model import MATERIAL_KINDS, MPMGridSpec

__all__ = ["mpm_substep_numpy", "particle_to_grid_numpy"]

_LIQUID, _SNOW = MATERIAL_KINDS["liquid"], MATERIAL_KINDS["snow"]
J_MIN, HARDENING_MIN, HARDENING_MAX = 1.0e-4, 0.1, 5.0


def _stencil(grid: MPMGridSpec, x: np.ndarray):
    inv_dx = 1.0 / grid.dx
    res = np.asarray(grid.resolution)
    xg = (x - np.asarray(grid.origin, x.dtype)) * x.dtype.type(inv_dx)
    base = np.clip(np.floor(xg - 0.5).astype(np.int64), 0, res - 3)
    fx = xg - base
    w = np.stack([0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2])  # (3, N, d)
    offsets = np.array(list(itertools.product(range(3), repeat=grid.dim)))  # (K, d), row-major
    weight = np.prod(w[offsets, :, np.arange(grid.dim)].transpose(0, 2, 1), axis=-1)  # (K, N)
    dpos = (offsets[:, None, :] - fx[None]) * x.dtype.type(grid.dx)  # (K, N, d)
    nodes = base[None] + offsets[:, None, :]
    strides = np.cumprod((res[1:].tolist() + [1])[::-1])[::-1]
    node = (nodes * strides).sum(-1)  # (K, N)
    return weight.astype(x.dtype), dpos.astype(x.dtype), node


def _kirchhoff(kind, F, C, Jp, mu, lam, viscosity, hardening, dim):
    eye = np.eye(dim, dtype=F.dtype)
    J = np.linalg.det(F)
    viscous = (J * viscosity)[:, None, None] * (C + C.transpose(0, 2, 1))
    h = np.where(kind == _SNOW, np.clip(np.exp(hardening * (1.0 - Jp)), HARDENING_MIN, HARDENING_MAX), 1.0)
    log_j = np.log(np.maximum(J, J_MIN))
    solid = h[:, None, None] * (mu[:, None, None] * (F @ F.transpose(0, 2, 1) - eye)
                                + (lam * log_j)[:, None, None] * eye) + viscous
    bulk = lam + (2.0 / dim) * mu
    liquid = (bulk * J * (J - 1.0))[:, None, None] * eye + viscous
    return np.where((kind == _LIQUID)[:, None, None], liquid, solid).astype(F.dtype)


def particle_to_grid_numpy(grid: MPMGridSpec, gravity, params: dict, x, v, C, F, Jp, dt, force=None):
    """P2G and grid update; returns (grid_velocity (G, d), grid_mass (G,))."""
    dim = grid.dim
    weight, dpos, node = _stencil(grid, x)
    mass = params["mass"]
    tau = _kirchhoff(params["kind"], F, C, Jp, params["mu"], params["lam"], params["viscosity"], params["hardening"],
                     dim)
    inv_dx = 1.0 / grid.dx
    apic = (-dt * params["volume"] * 4.0 * inv_dx * inv_dx)[:, None, None] * tau + mass[:, None, None] * C
    momentum = mass[:, None] * v + (0.0 if force is None else dt * force)
    contribution = weight[..., None] * (momentum[None] + np.einsum("nij,knj->kni", apic, dpos))
    grid_momentum = np.zeros((grid.node_count, dim), x.dtype)
    grid_mass = np.zeros(grid.node_count, x.dtype)
    np.add.at(grid_momentum, node.ravel(), contribution.reshape(-1, dim))
    np.add.at(grid_mass, node.ravel(), (weight * mass[None]).ravel())
    # gravity and walls
    filled = grid_mass > 0
    velocity = np.zeros_like(grid_momentum)
    velocity[filled] = grid_momentum[filled] / grid_mass[filled, None] + dt * np.asarray(gravity, x.dtype)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.resolution], indexing="ij"), -1).reshape(-1, dim)
    res, band = np.asarray(grid.resolution), grid.boundary_cells
    lower, upper = index < band, index >= res - band
    if grid.wall_mode == "separate":
        hit = (lower & (velocity < 0)) | (upper & (velocity > 0))
    else:
        hit = lower | upper
    velocity = np.where(hit, 0.0, velocity).astype(x.dtype)
    if grid.wall_mode == "no_slip":
        velocity[hit.any(axis=1)] = 0.0
    return velocity, grid_mass


def mpm_substep_numpy(grid: MPMGridSpec, gravity, params: dict, x, v, C, F, Jp, dt, force=None):
    """One substep; ``params`` holds per-particle numpy arrays named like MPMParticleParameters.
    Returns (x, v, C, F, Jp) after the step."""
    dim = grid.dim
    grid_velocity, _ = particle_to_grid_numpy(grid, gravity, params, x, v, C, F, Jp, dt, force)
    weight, dpos, node = _stencil(grid, x)
    gathered = grid_velocity[node]  # (K, N, d)
    v_new = (weight[..., None] * gathered).sum(0)
    inv_dx = 1.0 / grid.dx
    c_new = (4.0 * inv_dx * inv_dx) * np.einsum("kn,kni,knj->nij", weight, gathered, dpos)
    eye = np.eye(dim, dtype=x.dtype)
    f_new = (eye + dt * c_new) @ F
    liquid = params["kind"] == _LIQUID
    f_new[liquid] = eye
    f_new[liquid, 0, 0] = np.linalg.det((eye + dt * c_new[liquid]) @ F[liquid])
    jp_new = Jp.copy()
    snow = np.nonzero(params["kind"] == _SNOW)[0]
    if len(snow):
        u, sigma, vt = np.linalg.svd(f_new[snow])
        clamped = np.clip(sigma, params["clamp_low"][snow, None], params["clamp_high"][snow, None])
        changed = (clamped != sigma).any(axis=1)
        rows = snow[changed]
        f_new[rows] = (u[changed] * clamped[changed, None, :]) @ vt[changed]
        jp_new[rows] = Jp[rows] * np.prod(sigma[changed] / clamped[changed], axis=1)
    return (x + dt * v_new).astype(x.dtype), v_new.astype(x.dtype), c_new.astype(x.dtype), f_new, jp_new
