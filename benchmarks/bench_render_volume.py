"""Volume and particle renderers, all layers per frame, against plain vectorised numpy versions of
the same computation (same rays, same samples / pairs, same formulas), side by side in one run.

- ``render_smoke64_all_layers``: ``hybridsim.render.volume.render_volume`` on a 64^3 smoke volume
  (rgb lit by a light-transmittance sweep, alpha, depth, mask, segmentation, flow) vs a numpy
  ray march with the same clipped segments, the same number of samples per ray, the same
  trilinear sampling and compositing; plus the backward / forward time ratio of ours.
- ``render_mpm20k_all_layers``: ``hybridsim.render.particles.render_particles`` on 20,000
  particles (rgb, alpha, depth, normal, segmentation, particle id, forward flow and the moved
  depth) vs a numpy splatter of the same (pixel, particle) pairs and formulas (bincount sums).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hybridsim.bench import Record, case
from hybridsim.render.camera import Camera


def _interleaved_medians(fns, repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time [s] of each function, run in turns (one call of each per round), so that
    load from other processes on a shared machine hits every variant alike."""
    import statistics
    import time

    for _ in range(warmup):
        for fn in fns:
            fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(out) for out in samples]


# --------------------------------------------------------------------------------------------
# Smoke volume
# --------------------------------------------------------------------------------------------

_SMOKE_CELLS = 64
_SMOKE_DX = 1.0 / 64
_LIGHT = (-0.35, 0.25, -1.0)
_FRAME_DT = 1.0 / 30


def _smoke(cells: int, dx: float):
    """A plume-like density (rising column of blobs plus a few smaller puffs) and a swirling
    velocity (nx, ny, nz, 3) [m/s], float32."""
    gen = torch.Generator().manual_seed(0)
    axis = (torch.arange(cells, dtype=torch.float64) + 0.5) * dx
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    density = torch.zeros_like(x)
    for k in range(6):
        cx, cy = 0.5 + 0.05 * math.sin(2.0 * k), 0.5 + 0.05 * math.cos(3.0 * k)
        cz, r = 0.15 + 0.13 * k, 0.08 + 0.02 * k
        density += 2.0 * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * r * r))
    for _ in range(10):
        c = torch.rand(3, generator=gen, dtype=torch.float64) * 0.6 + 0.2
        density += 1.5 * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 0.04 ** 2))
    density = torch.where(density > 0.02, density, torch.zeros_like(density))  # empty air is exactly 0, as a solver's
    velocity = torch.stack([-(y - 0.5) * 2.0, (x - 0.5) * 2.0, 0.6 * torch.ones_like(z)], dim=-1)
    return density.float(), velocity.float()


def _smoke_camera(size: int) -> Camera:
    return Camera(position=(1.6, -1.3, 1.1), look_at=(0.5, 0.5, 0.45), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                  width=size, height=size)


def _numpy_light(sigma: np.ndarray, cell_size: float, light) -> np.ndarray:
    """Light transmittance by the same slice sweep as ``light_transmittance``, in numpy."""
    light = np.asarray(light, dtype=np.float64)
    light = light / np.linalg.norm(light)
    axis = int(np.argmax(np.abs(light)))
    others = [a for a in range(3) if a != axis]
    step = cell_size / abs(light[axis])
    shift = [-light[a] / abs(light[axis]) for a in others]
    s = np.transpose(sigma, (axis, *others))
    if light[axis] < 0:
        s = s[::-1]
    half = 0.5 * step
    nb, nc = s.shape[1:]
    ib, ic = math.floor(shift[0]), math.floor(shift[1])
    fb, fc = shift[0] - ib, shift[1] - ic
    b0, c0 = ib + 1, ic + 1
    tau = np.empty_like(s)
    tau[0] = half * s[0]
    padded = np.zeros((nb + 3, nc + 3), dtype=s.dtype)
    for k in range(1, s.shape[0]):
        padded[1:nb + 1, 1:nc + 1] = tau[k - 1] + half * s[k - 1]
        at = lambda db, dc: padded[b0 + db:b0 + db + nb, c0 + dc:c0 + dc + nc]  # noqa: E731
        tau[k] = (1 - fb) * ((1 - fc) * at(0, 0) + fc * at(0, 1)) + fb * ((1 - fc) * at(1, 0) + fc * at(1, 1)) \
            + half * s[k]
    if light[axis] < 0:
        tau = tau[::-1]
    order = [axis, *others]
    return np.exp(-np.transpose(tau, [order.index(a) for a in range(3)]))


def _numpy_volume(density, velocity, camera: Camera, cell_size, opacity, color, ambient, intensity, frame_dt,
                  chunk_samples=2**18):
    """The reference: every layer of ``render_volume`` (lit, with flow) by a numpy ray march."""
    dtype = density.dtype
    cells = np.array(density.shape)
    lo, hi = np.zeros(3), cells * cell_size
    light = _numpy_light(opacity * np.maximum(density, 0.0), cell_size, _LIGHT).astype(dtype)
    table = np.concatenate([density[..., None], light[..., None], velocity], axis=-1).reshape(-1, 5)
    rot = camera.rotation(dtype=torch.float64).numpy()
    f = camera.focal()
    height, width = camera.height, camera.width
    xs = (np.arange(width) + 0.5 - camera.cx) / f
    ys = (np.arange(height) + 0.5 - camera.cy) / f
    xx, yy = np.meshgrid(xs, ys)
    dirs = np.stack([xx, yy, np.ones_like(xx)], -1)
    dirs = (dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)) @ rot
    dirs = dirs.reshape(-1, 3).astype(dtype)
    position = np.asarray(camera.position, dtype=dtype)
    origins = np.broadcast_to(position, dirs.shape)
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    centres = np.stack([cols, rows], -1).reshape(-1, 2).astype(dtype) + 0.5
    safe = np.where(np.abs(dirs) > 1e-12, dirs, np.where(dirs < 0, -1e-12, 1e-12))
    t0, t1 = (lo - origins) / safe, (hi - origins) / safe
    t_near = np.maximum(np.minimum(t0, t1).max(-1), 0.0)
    t_far = np.maximum(t0, t1).min(-1)
    hit = np.nonzero(t_far > t_near)[0]
    out = np.zeros((height * width, 7), dtype=dtype)
    steps = max(1, math.ceil(float((t_far[hit] - t_near[hit]).max()) / cell_size))
    strides = np.array([cells[1] * cells[2], cells[2], 1])
    mids = np.arange(steps, dtype=dtype) + 0.5
    cos = dirs @ rot[2].astype(dtype)
    per_chunk = max(1, chunk_samples // steps)
    for begin in range(0, len(hit), per_chunk):
        idx = hit[begin:begin + per_chunk]
        delta = (t_far[idx] - t_near[idx]) / steps
        t = t_near[idx, None] + delta[:, None] * mids
        points = origins[idx, None, :] + t[..., None] * dirs[idx, None, :]
        u = np.clip((points - lo) / cell_size - 0.5, 0.0, cells - 1.0)  # border: clamp to the outer centres
        base = np.minimum(np.floor(u).astype(np.int64), cells - 2)
        frac = (u - base).astype(dtype)
        flat = base @ strides
        samples = np.zeros(points.shape[:2] + (5,), dtype=dtype)
        for corner in range(8):
            bits = [(corner >> a) & 1 for a in range(3)]
            weight = np.prod([frac[..., a] if bits[a] else 1.0 - frac[..., a] for a in range(3)], axis=0)
            samples += weight[..., None] * table[flat + int(np.dot(bits, strides))]
        tau = opacity * delta[:, None] * np.maximum(samples[..., 0], 0.0)
        optical = np.cumsum(tau, axis=1)
        w = np.exp(tau - optical) * -np.expm1(-tau)
        shaded = (w * (ambient + intensity * samples[..., 1])).sum(1)
        cam = (points + samples[..., 2:5] * frame_dt - position) @ rot.T.astype(dtype)
        pixels = cam[..., :2] * (f / np.maximum(cam[..., 2:], 1e-6)) + np.array([camera.cx, camera.cy], dtype=dtype)
        out[idx, :3] = shaded[:, None] * color
        out[idx, 3] = -np.expm1(-optical[:, -1])
        out[idx, 4] = (w * t).sum(1) * cos[idx]
        out[idx, 5:7] = ((pixels - centres[idx, None, :]) * w[..., None]).sum(1)
    alpha = np.clip(out[:, 3], 0.0, 1.0)
    seen = alpha >= 1e-4
    norm = np.where(seen, alpha, 1.0)
    mask = alpha >= 0.5
    return {"rgb": np.clip(out[:, :3], 0.0, 1.0).reshape(height, width, 3), "alpha": alpha.reshape(height, width),
            "depth": np.where(seen, out[:, 4] / norm, np.inf).reshape(height, width),
            "mask": mask.reshape(height, width), "segmentation": mask.astype(np.int32).reshape(height, width),
            "flow": np.where(seen[:, None], out[:, 5:7] / norm[:, None], 0.0).reshape(height, width, 2)}


@case("render_smoke64_all_layers")
def render_smoke64_all_layers(quick: bool) -> Record:
    from hybridsim.render.volume import render_volume

    density, velocity = _smoke(_SMOKE_CELLS, _SMOKE_DX)
    options = dict(origin=(0.0, 0.0, 0.0), cell_size=_SMOKE_DX, opacity=4.0, color=(0.9, 0.9, 0.92), ambient=0.35,
                   light_intensity=0.65, light_direction=_LIGHT, frame_dt=_FRAME_DT)
    repeats = 3 if quick else 7
    notes, extra, rows = [], {}, []
    for size in ((128,) if quick else (128, 256)):
        camera = _smoke_camera(size)

        def ours(skip_empty=None):
            with torch.no_grad():
                return render_volume(density, camera=camera, velocity=velocity, skip_empty=skip_empty, **options)

        weights = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(1))

        def ours_backward():
            leaf = density.clone().requires_grad_(True)
            leaf_velocity = velocity.clone().requires_grad_(True)
            layers = render_volume(leaf, camera=camera, velocity=leaf_velocity, **options)
            loss = (layers["rgb"] * weights).sum() + layers["alpha"].sum() + layers["flow"].sum()
            torch.autograd.grad(loss, [leaf, leaf_velocity])

        dens_np, vel_np = density.numpy(), velocity.numpy()

        def reference():
            return _numpy_volume(dens_np, vel_np, camera, _SMOKE_DX, 4.0, np.array([0.9, 0.9, 0.92], np.float32),
                                 0.35, 0.65, _FRAME_DT)

        a, b = ours(), reference()
        seen = a["alpha"].numpy() > 0.05
        diff = {key: float(np.abs(a[key].numpy() - b[key]).max()) for key in ("rgb", "alpha", "flow")}
        diff["depth"] = float(np.abs(a["depth"].numpy()[seen] - b["depth"][seen]).max())
        t_ours, t_ref, t_full, t_both = _interleaved_medians([ours, reference, lambda: ours(False), ours_backward],
                                                             repeats)
        # backward = (forward + backward with the graph) - forward (both march every sample: no skipping
        # when density needs a gradient)
        backward_ratio = (t_both - t_full) / t_full
        rows.append((size, t_ours, t_ref))
        notes.append(f"{size}^2: {t_ours * 1e3:.0f} vs {t_ref * 1e3:.0f} ms/frame (ours without empty-space skipping "
                     f"{t_full * 1e3:.0f}), fwd+bwd {t_both * 1e3:.0f} ms (bwd/fwd {backward_ratio:.2f})")
        extra[f"size_{size}"] = {"ours_ms": t_ours * 1e3, "numpy_ms": t_ref * 1e3, "fwd_bwd_ms": t_both * 1e3,
                                 "ours_no_skip_ms": t_full * 1e3,
                                 "backward_over_forward": backward_ratio, "max_abs_diff": diff,
                                 "coverage": float(seen.mean())}
    size, t_ours, t_ref = rows[-1]
    return Record("render_smoke64_all_layers", t_ours * 1e3, t_ref * 1e3, "ms/frame",
                  f"render_volume, 64^3 smoke at {size}^2, float32: lit rgb (light sweep), alpha, depth, mask, "
                  "segmentation, flow; step = 1 cell; empty-space skipping (same samples)",
                  "numpy ray march, same rays, samples per ray, trilinear sampling and layers",
                  torch.get_num_threads(), notes="; ".join(notes), extra=extra)


# --------------------------------------------------------------------------------------------
# 20k-particle MPM-like scene
# --------------------------------------------------------------------------------------------


def _particle_block(count: int = 20_000, seed: int = 0):
    """Particles as an MPM body sampler places them (jittered lattice, 8 per cell of 1/40 m): a
    water-like slab and a jelly cube on it, two materials; a second frame moved by a swirl."""
    gen = torch.Generator().manual_seed(seed)
    spacing = 1.0 / 80
    slab = torch.stack(torch.meshgrid(torch.arange(64), torch.arange(40), torch.arange(6), indexing="ij"),
                       -1).reshape(-1, 3).double() * spacing + torch.tensor([-0.4, -0.25, 0.02], dtype=torch.float64)
    cube_side = round((count - len(slab)) ** (1 / 3)) + 1
    cube = torch.stack(torch.meshgrid(*(torch.arange(cube_side),) * 3, indexing="ij"), -1).reshape(-1, 3).double()
    cube = cube * spacing + torch.tensor([-0.1, -0.1, 0.12], dtype=torch.float64)
    positions = torch.cat([slab, cube])[:count]
    positions = positions + (torch.rand(positions.shape, generator=gen, dtype=torch.float64) - 0.5) * 0.3 * spacing
    material = torch.cat([torch.zeros(len(slab), dtype=torch.int64), torch.ones(len(cube), dtype=torch.int64)])[:count]
    colors = torch.tensor([[0.2, 0.45, 0.9], [0.9, 0.4, 0.3]], dtype=torch.float64)[material]
    swirl = torch.stack([-positions[:, 1], positions[:, 0], 0.3 * torch.ones(count, dtype=torch.float64)], -1)
    moved = positions + swirl * 0.03
    sigmas = torch.full((count,), 0.6 * spacing, dtype=torch.float64)
    return positions.float(), moved.float(), colors.float(), sigmas.float(), material


def _particle_camera(size: int) -> Camera:
    return Camera(position=(0.55, -0.8, 0.55), look_at=(0.0, 0.0, 0.1), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                  width=size, height=size)


def _numpy_particles(camera: Camera, positions, moved, colors, sigmas, material, *, background, light_direction,
                     intensity, ambient, opacity):
    """The reference: the solid-splat path of ``render_particles`` (rgb, alpha, depth, normal,
    segmentation, particle, forward flow + its depth) with numpy pair lists and bincount sums."""
    from hybridsim.render.particles import _EXP_CUT, _MAX_ALPHA, _NORMAL_TILT, _PEAK, _SOFT_RELU, CUTOFF

    dtype = positions.dtype
    rot = camera.rotation(dtype=torch.float64).numpy().astype(dtype)
    position = np.asarray(camera.position, dtype=dtype)
    f = camera.focal()
    principal = np.array([camera.cx, camera.cy], dtype=dtype)

    def project(points):
        cam = (points - position) @ rot.T
        return cam[:, :2] * (f / cam[:, 2:]) + principal, cam[:, 2]

    xy, z = project(positions)
    moved_xy, moved_z = project(moved)
    light = rot @ (np.asarray(light_direction, dtype=dtype) / np.linalg.norm(light_direction))
    sigma_px = sigmas * f / np.maximum(z, 1e-6)
    height, width = camera.height, camera.width
    # pairs: every pixel centre strictly within CUTOFF sigmas of a particle
    reach = CUTOFF * sigma_px.astype(np.float64)
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    x0 = np.clip(np.ceil(x - reach - 0.5), 0, None).astype(np.int64)
    x1 = np.clip(np.floor(x + reach - 0.5), None, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(y - reach - 0.5), 0, None).astype(np.int64)
    y1 = np.clip(np.floor(y + reach - 0.5), None, height - 1).astype(np.int64)
    nx = np.maximum(x1 - x0 + 1, 0)
    boxes = nx * np.maximum(y1 - y0 + 1, 0) * (z > 1e-6)
    particle = np.repeat(np.arange(len(z)), boxes)
    local = np.arange(particle.size) - np.repeat(np.cumsum(boxes) - boxes, boxes)
    col = x0[particle] + local % nx[particle]
    row = y0[particle] + local // nx[particle]
    inside = (col + 0.5 - x[particle]) ** 2 + (row + 0.5 - y[particle]) ** 2 < reach[particle] ** 2
    particle, pixel = particle[inside], (row * width + col)[inside]
    # splat weight, shading, blend weight (soft z-buffer with a per-pixel scale)
    inv = 1.0 / sigma_px[particle]
    ux = ((pixel % width).astype(dtype) + 0.5 - xy[particle, 0]) * inv
    uy = ((pixel // width).astype(dtype) + 0.5 - xy[particle, 1]) * inv
    r2 = ux * ux + uy * uy
    g = np.where(r2 < CUTOFF * CUTOFF, np.exp(-0.5 * r2) - _EXP_CUT + 0.5 * _EXP_CUT * (r2 - CUTOFF * CUTOFF), 0.0)
    g = g / _PEAK
    qx, qy = ux * _NORMAL_TILT, uy * _NORMAL_TILT
    inv_norm = 1.0 / np.sqrt(qx * qx + qy * qy + 1.0)
    lam = -(qx * light[0] + qy * light[1] - light[2]) * inv_norm
    shade = ambient + intensity * 0.5 * (lam + np.sqrt(lam * lam + _SOFT_RELU ** 2))
    a = np.minimum(opacity * g, _MAX_ALPHA).astype(dtype)
    count = height * width
    alpha = -np.expm1(np.bincount(pixel, np.log1p(-a), minlength=count))
    tau = np.median(sigmas)
    zp = z[particle]
    log_w = np.log(np.maximum(a, 1e-30)) - zp / tau
    top_log = np.full(count, -np.inf)
    np.maximum.at(top_log, pixel, log_w)
    w = a * np.exp(-zp / tau - top_log[pixel])
    weight = np.bincount(pixel, w, minlength=count)
    safe = np.maximum(weight, 1e-30)
    values = [w * shade * colors[particle, c] for c in range(3)] + [w * zp] \
        + [w * (moved_xy[particle, c] - xy[particle, c]) for c in range(2)] + [w * moved_z[particle]] \
        + [w * inv_norm * qx, w * inv_norm * qy, -w * inv_norm]
    sums = np.stack([np.bincount(pixel, v, minlength=count) for v in values], -1) / safe[:, None]
    rgb = np.clip(alpha[:, None] * sums[:, :3] + (1.0 - alpha)[:, None] * np.asarray(background), 0.0, 1.0)
    # the particle weighing most per pixel: sort pairs by (pixel, weight), take each pixel's last
    order = np.lexsort((w, pixel))
    last = np.ones(order.size, dtype=bool)
    last[:-1] = pixel[order][1:] != pixel[order][:-1]
    top = np.full(count, -1, dtype=np.int64)
    top[pixel[order][last]] = particle[order][last]
    covered = (alpha >= 0.5) & (top >= 0)
    normal = sums[:, 7:10] / np.linalg.norm(sums[:, 7:10], axis=-1, keepdims=True).clip(1e-12)
    layers = {"rgb": rgb, "alpha": alpha, "depth": np.where(covered, sums[:, 3], np.inf),
              "normal": np.where(covered[:, None], normal, 0.0),
              "segmentation": np.where(covered, material[np.maximum(top, 0)] + 1, 0).astype(np.int32),
              "particle": np.where(covered, top, -1), "flow_forward": np.where(covered[:, None], sums[:, 4:6], 0.0),
              "flow_forward_depth": np.where(covered, sums[:, 6], np.inf)}
    return {key: value.reshape((height, width) + value.shape[1:]) for key, value in layers.items()}


@case("render_mpm20k_all_layers")
def render_mpm20k_all_layers(quick: bool) -> Record:
    from hybridsim.render.particles import render_particles

    positions, moved, colors, sigmas, material = _particle_block()
    look = dict(background=(0.08, 0.09, 0.12), light_direction=(-0.4, 0.3, -1.0), ambient=0.35, opacity=0.95)
    repeats = 3 if quick else 7
    notes, extra, rows = [], {}, []
    for size in ((128,) if quick else (128, 256)):
        camera = _particle_camera(size)

        def ours():
            with torch.no_grad():
                return render_particles(camera, positions, colors, sigmas, material=material,
                                        flow_to={"flow_forward": (moved, None)}, light_intensity=0.8, **look)

        pos_np, moved_np, col_np, sig_np, mat_np = (t.numpy() for t in (positions, moved, colors, sigmas, material))

        def reference():
            return _numpy_particles(camera, pos_np, moved_np, col_np, sig_np, mat_np, intensity=0.8, **look)

        a, b = ours(), reference()
        covered = a["segmentation"].numpy() > 0
        diff = {key: float(np.abs(a[key].numpy() - b[key]).max()) for key in ("rgb", "alpha")}
        for key in ("depth", "flow_forward", "normal"):
            diff[key] = float(np.abs(a[key].numpy()[covered] - b[key][covered]).max())
        diff["segmentation_mismatch"] = float((a["segmentation"].numpy() != b["segmentation"]).mean())
        weights = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(1))

        def ours_backward():
            leaf = positions.clone().requires_grad_(True)
            layers = render_particles(camera, leaf, colors, sigmas, material=material,
                                      flow_to={"flow_forward": (moved, None)}, light_intensity=0.8, **look)
            torch.autograd.grad((layers["rgb"] * weights).sum() + layers["alpha"].sum(), leaf)

        t_ours, t_ref, t_both = _interleaved_medians([ours, reference, ours_backward], repeats)
        backward_ratio = (t_both - t_ours) / t_ours
        rows.append((size, t_ours, t_ref))
        notes.append(f"{size}^2: {t_ours * 1e3:.0f} vs {t_ref * 1e3:.0f} ms/frame, fwd+bwd {t_both * 1e3:.0f} ms "
                     f"(bwd/fwd {backward_ratio:.2f})")
        extra[f"size_{size}"] = {"ours_ms": t_ours * 1e3, "numpy_ms": t_ref * 1e3, "fwd_bwd_ms": t_both * 1e3,
                                 "backward_over_forward": backward_ratio, "max_abs_diff": diff,
                                 "coverage": float(covered.mean())}
    size, t_ours, t_ref = rows[-1]
    return Record("render_mpm20k_all_layers", t_ours * 1e3, t_ref * 1e3, "ms/frame",
                  f"render_particles, {len(positions)} particles (2 materials, splats) at {size}^2, float32: rgb, "
                  "alpha, depth, normal, segmentation, particle id, forward flow + moved depth",
                  "numpy splatter of the same pixel-particle pairs and formulas (bincount sums)",
                  torch.get_num_threads(), notes="; ".join(notes), extra=extra)
