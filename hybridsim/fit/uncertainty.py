"""Laplace (Gauss-Newton) uncertainty of fitted values.

Residuals are image moments per frame, in pixels: the centroid (x, y) and sqrt(area) differences
between the rendered alpha and the target mask, on the frames where both are visible. The Jacobian
J of each block comes from central finite differences in float64 (step 1e-3 of each parameter's
natural scale, kept inside its range). Each block b gets its own noise variance from its residuals,
sigma_b^2 = |r_b|^2 / (n_b - p) (at least SIGMA_FLOOR_PX^2), and the information matrix is
H = sum_b J_b^T J_b / sigma_b^2, the covariance its inverse.

Identifiability: H is scaled by each parameter's natural scale s (range width, else max(|v|, 1)),
so an eigenvalue below 1 means that moving along that direction across a whole range changes
the residuals by less than one noise sigma. Such directions are treated as flat: a parameter with
a weight > NULL_COMPONENT on one of them gets ``identifiable: false`` and no uncertainty (None).
"""

from __future__ import annotations

import math

import torch

from .losses import moment_residuals
from .target import observed_coverage

__all__ = ["laplace_uncertainty", "SIGMA_FLOOR_PX", "NULL_COMPONENT"]

SIGMA_FLOOR_PX = 0.01
NULL_COMPONENT = 0.1
FD_STEP = 1e-3


def laplace_uncertainty(world64, camera, target, specs, values: dict, frames: int, *, motion_prior=None,
                        observe: dict | None = None) -> dict:
    """Per parameter path: {"uncertainty": float|list|None, "identifiable": bool|list, "curvature": ...}.

    ``world64`` is a float64 World of the fitted scene; ``values`` the fitted values (path -> number or list).
    ``motion_prior``: a trained ResidualForcePrior kept fixed inside the rollouts. ``observe``: the
    fit's measurement of its renders (keyword arguments of :func:`observed_coverage`), None for
    the rendered coverage.
    """
    from .scenes import fit_scene

    scene = fit_scene(world64)

    flat, index = [], []  # flat parameter vector and (spec, component) per entry
    for spec in specs:
        value = values[spec.path]
        comps = list(value) if isinstance(value, (list, tuple)) else [value]
        for c, v in enumerate(comps):
            flat.append(float(v))
            index.append((spec, c))
    theta0 = torch.tensor(flat, dtype=torch.float64, device=world64.device)
    p = len(flat)

    def params_of(theta):
        out, i = {}, 0
        for spec in specs:
            out[spec.path] = theta[i:i + spec.size].clone() if spec.size > 1 else theta[i].clone()
            i += spec.size
        return out

    def alpha_of(theta):
        with torch.no_grad():
            prior = None
            if motion_prior is not None:
                motion_prior.mass = world64.model(params_of(theta)).mass.detach()
                prior = motion_prior
            trajectory = scene.rollout(params_of(theta), frames - 1, check=False, motion_prior=prior)
            out = scene.render(trajectory, params_of(theta), camera)
            if observe is not None:
                # unrounded: the differences below are far smaller than one grey level
                return observed_coverage(out["rgb"], **observe, quantize=False).cpu()
            return out["coverage"].cpu()

    alpha0 = alpha_of(theta0)
    res_c0, res_a0, ok = moment_residuals(alpha0, target, frames)

    def residuals(theta):
        alpha = alpha_of(theta)
        rc, ra, _ = moment_residuals(alpha, target, frames, ok)
        return rc, ra

    jac_c = torch.zeros((res_c0.numel(), p), dtype=torch.float64)
    jac_a = torch.zeros((res_a0.numel(), p), dtype=torch.float64)
    scales = []
    for i, (spec, c) in enumerate(index):
        s = spec.scale(flat[i])
        scales.append(s)
        h = FD_STEP * s
        up, down = theta0.clone(), theta0.clone()
        hi_v, lo_v = flat[i] + h, flat[i] - h
        if spec.bounded:
            hi_v, lo_v = min(hi_v, spec.hi), max(lo_v, spec.lo)
        up[i], down[i] = hi_v, lo_v
        rc_up, ra_up = residuals(up)
        rc_dn, ra_dn = residuals(down)
        jac_c[:, i] = (rc_up - rc_dn) / (hi_v - lo_v)
        jac_a[:, i] = (ra_up - ra_dn) / (hi_v - lo_v)

    info = torch.zeros((p, p), dtype=torch.float64)
    blocks = {}
    for name, r, jac in (("centroid", res_c0, jac_c), ("size", res_a0, jac_a)):
        n = r.numel()
        if n == 0:
            continue
        dof = max(n - p, 1)
        sigma2 = max(float((r * r).sum()) / dof, SIGMA_FLOOR_PX ** 2)
        info += jac.T @ jac / sigma2
        blocks[name] = {"residuals": n, "sigma_px": math.sqrt(sigma2), "rms_px": float(r.pow(2).mean().sqrt())}

    s = torch.tensor(scales, dtype=torch.float64)
    scaled = info * s[:, None] * s[None, :]
    evals, evecs = torch.linalg.eigh(scaled)
    flat_dir = evals < 1.0
    cov_scaled = torch.zeros_like(scaled)
    for k in range(p):
        if not flat_dir[k]:
            cov_scaled += torch.outer(evecs[:, k], evecs[:, k]) / evals[k]
    if bool(flat_dir.any()):
        weak = (evecs[:, flat_dir].abs() > NULL_COMPONENT).any(dim=1)
    else:
        weak = torch.zeros(p, dtype=torch.bool)
    sigma = torch.sqrt(torch.diagonal(cov_scaled).clamp(min=0.0)) * s
    curvature = torch.diagonal(info)

    out = {}
    i = 0
    for spec in specs:
        sl = slice(i, i + spec.size)
        unc = [None if bool(weak[j]) else float(sigma[j]) for j in range(sl.start, sl.stop)]
        ident = [not bool(weak[j]) for j in range(sl.start, sl.stop)]
        curv = [float(curvature[j]) for j in range(sl.start, sl.stop)]
        if spec.size == 1:
            unc, ident, curv = unc[0], ident[0], curv[0]
        out[spec.path] = {"uncertainty": unc, "identifiable": ident, "curvature": curv}
        i += spec.size
    out["_blocks"] = blocks
    out["_frames_used"] = int(ok.sum())
    return out

