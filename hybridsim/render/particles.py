"""Differentiable particle rendering: Gaussian splats through a scene camera (perspective or
orthographic), blended with a soft z-buffer, plus exact optical flow from particle motion.

Each particle is a screen-space Gaussian of standard deviation ``sigma`` [m] (``sigma * f / z``
pixels under perspective), cut off smoothly (C1) at ``CUTOFF`` sigmas; its opacity at a pixel
is ``alpha = opacity * g``. A pixel's coverage is exact, ``1 - prod(1 - alpha_i)``; its colour
(and depth, normal, flow) is the mean of its splats weighted by ``alpha_i * exp(-z_i / tau)``
(a soft z-buffer, i.e. weighted blended order-independent transparency): splats a few
``tau`` behind the front one fade out, but nothing jumps when two particles swap depth order, so
the image is continuous in the particle positions (finite differences agree with autodiff).
``tau`` is ``depth_softness`` times the median splat sigma [m]. Each splat is shaded as a smooth
bump (Lambert plus ambient, its normal tilting with the pixel's offset inside the splat).

Optionally, particles flagged ``liquid`` are drawn as one surface instead: their normalised splat
density D (about 1 inside a packed liquid, with a kernel ``liquid_smoothing`` times wider than a
splat) is turned into opacity by a smoothstep around D = 0.5 (the iso-surface), shaded with the
normal of the height field D plus a specular highlight, and blended with the other splats as one
more splat at the liquid's mean depth.

Memory stays bounded and work sparse: only the (pixel, particle) pairs where a splat reaches a
pixel centre are formed (indices only), sorted by pixel and summed per pixel with index_add, in
chunks of whole pixels of at most ``budget_bytes`` of intermediates. The backward pass
recomputes each chunk, so no dense (pixels, particles) tensor, and no graph of the whole image,
is ever kept.

Layers: ``rgb`` and ``alpha`` (and the blended ``depth``, ``normal`` and flow) are
differentiable w.r.t. particle positions, colours, sizes and the light. Where ``alpha`` is below
0.5 the hard layers show the background: depth inf (or the ground's), normal 0 (or the ground's),
segmentation 0, and the background's flow. Flow of a covered pixel is the blended pixel
displacement of its particles between two frames (each particle projected in both), so a rigidly
translating particle set gives exactly its displacement.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..errors import AssetError
from .camera import Camera

__all__ = ["render_particles", "render_particle_frames", "render_mpm", "render_mpm_layers", "particle_flow_occlusion",
           "CUTOFF"]

CUTOFF = 3.0
"""Splat support radius [sigmas]: the Gaussian minus its tangent at the cutoff, so the splat and
its slope reach 0 there (C1, no kink for finite differences to trip on)."""
_EXP_CUT = math.exp(-0.5 * CUTOFF * CUTOFF)
_PEAK = 1.0 - _EXP_CUT * (1.0 + 0.5 * CUTOFF * CUTOFF)  # the shifted kernel at the centre
_SOFT_RELU = 0.05  # Lambert terms use a smooth max(x, 0) of this width
_ALPHA_FLOOR = 1e-30  # blend weights use log(max(alpha, floor)) for their per-pixel scale
_LOG_WEIGHT_MAX = -math.log(_ALPHA_FLOOR)  # so exponents stay below this (no overflow)
_MAX_ALPHA = 0.99
_NORMAL_TILT = 0.5  # a splat's normal is (tilt * offset / sigma, -1) normalised: a smooth bump
_LIQUID_ISO = (0.3, 0.7)  # smoothstep band of the normalised liquid density
_SPECULAR = (0.35, 40.0)  # liquid highlight strength and Blinn exponent
_CHUNK_BYTES = 48 * 2**20
_VALUES_PER_PAIR = 40  # floats per (pixel, particle) pair alive in a chunk, forward and backward
_NEAR = 1e-6
# integral of the splat kernel over the plane, in units of 2 pi sigma^2
_KERNEL_MASS = (1.0 - _EXP_CUT * (1.0 + CUTOFF ** 2 / 2.0 + CUTOFF ** 4 / 8.0)) / _PEAK


# --------------------------------------------------------------------------------------------
# Pixel-particle pairs: splat, shade and blend one chunk of pixels
# --------------------------------------------------------------------------------------------


def _smoothstep(lo: float, hi: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _soft_relu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x + torch.sqrt(x * x + _SOFT_RELU * _SOFT_RELU))


def _pixel_sum(values: torch.Tensor, slot: torch.Tensor, count: int) -> torch.Tensor:
    """Sum pair values (M, ...) into ``count`` pixels by their slot (M,)."""
    return values.new_zeros((count,) + tuple(values.shape[1:])).index_add_(0, slot, values)


def _composite(chunk, width, bg, xy, z, sigma, tau, color, feat, liquid, light, intensity, ambient, opacity,
               liquid_scale):
    """Blend one chunk of (pixel, particle) pairs.

    ``chunk`` = (pixels (U,) unique pixel indices, slot (M,) pixel slot of each pair, particle (M,)).
    Returns out (U, 3 + 1 + C + 3) = [rgb over the background, alpha, features and normal times
    alpha] and the particle weighing most in each pixel (U,) (-1 where none).
    """
    pixels, slot, particle = chunk
    count = pixels.shape[0]
    dtype = xy.dtype
    row = torch.div(pixels, width, rounding_mode="floor")
    centre = torch.stack([pixels - row * width, row], dim=-1).to(dtype)[slot] + 0.5
    inv = 1.0 / sigma[particle]
    ux = (centre[:, 0] - xy[particle, 0]) * inv  # offsets in sigmas
    uy = (centre[:, 1] - xy[particle, 1]) * inv
    r2 = ux * ux + uy * uy
    ex = torch.exp(-0.5 * r2)
    inside = r2 < CUTOFF * CUTOFF
    # Gaussian minus its tangent (in r^2) at the cutoff: >= 0, and C1 where it reaches 0
    g = torch.where(inside, ex - _EXP_CUT + 0.5 * _EXP_CUT * (r2 - CUTOFF * CUTOFF), torch.zeros_like(ex)) / _PEAK
    zp = z[particle]
    fluid = liquid[particle]
    has_liquid = bool(fluid.any())
    has_solid = not bool(fluid.all())
    channels = feat.shape[1]
    width_all = 3 + channels + 3
    if has_solid:
        # each splat shades like a smooth bump (camera space: x right, y down, -z faces the camera)
        qx, qy = ux * _NORMAL_TILT, uy * _NORMAL_TILT
        nz = -torch.ones_like(qx)
        inv_norm = torch.rsqrt(qx * qx + qy * qy + 1.0)
        shade = ambient + intensity * _soft_relu(-(qx * light[0] + qy * light[1] - light[2]) * inv_norm)
        a = (opacity * g).clamp(max=_MAX_ALPHA) * ~fluid
        alpha_s = -torch.expm1(_pixel_sum(torch.log1p(-a), slot, count))
        # blend weights a exp(-z / tau), scaled per pixel by exp(-c), c = the largest log weight
        # (a constant: ratios, hence colours and gradients, do not change; nothing over- or underflows)
        log_w = torch.log(a.detach().clamp(min=_ALPHA_FLOOR)) - zp.detach() / tau
        c_s = log_w.new_full((count,), -float("inf")).scatter_reduce_(0, slot, log_w, "amax")
        w = a * torch.exp(-zp / tau - c_s[slot])
        wn = w * inv_norm
        sums = _pixel_sum(torch.cat([w[:, None], (w * shade)[:, None] * color[particle], w[:, None] * feat[particle],
                                     torch.stack([wn * qx, wn * qy, wn * nz], dim=-1)], dim=-1), slot, count)
        weight_s, solid_sum = sums[:, 0], sums[:, 1:]
        best_w = w.detach().new_zeros(count).scatter_reduce_(0, slot, w.detach(), "amax")
    else:
        alpha_s = weight_s = bg.new_zeros(count)
        c_s = bg.new_full((count,), -float("inf"))
        solid_sum = bg.new_zeros(count, width_all)
        w = best_w = None
    if has_liquid:
        # liquid surface: normalised density D, its gradient (the normal), colour and features
        weight = fluid * liquid_scale
        lw = g * weight
        slope = torch.where(inside, ex - _EXP_CUT, torch.zeros_like(ex)) * (weight / _PEAK)  # -dg/d(r^2) * 2
        sums = _pixel_sum(torch.cat([lw[:, None], (slope * ux)[:, None], (slope * uy)[:, None],
                                     lw[:, None] * color[particle], lw[:, None] * feat[particle]], dim=-1), slot, count)
        density = sums[:, 0]
        safe = density.clamp(min=1e-12)
        # the height field D faces the camera; -(d D / d pixel) * sigma is its slope
        n_l = torch.nn.functional.normalize(torch.stack([sums[:, 1], sums[:, 2], -torch.ones_like(density)], dim=-1),
                                            dim=-1)
        diffuse = ambient + intensity * _soft_relu(-(n_l @ light))
        half = torch.nn.functional.normalize(-light + light.new_tensor([0.0, 0.0, -1.0]), dim=0)
        specular = _SPECULAR[0] * torch.relu(n_l @ half) ** _SPECULAR[1]
        mean = sums[:, 3:] / safe[:, None]
        alpha_l = _smoothstep(*_LIQUID_ISO, density)
        # the liquid blends as one more splat at its mean depth; both layers on one weight scale c
        # (pixels without liquid have no liquid depth: they keep the solids' scale)
        c_l = torch.where(alpha_l.detach() > 0,
                          torch.log(alpha_l.detach().clamp(min=_ALPHA_FLOOR)) - mean[:, 3].detach() / tau,
                          torch.full_like(c_s, -float("inf")))
        c = torch.maximum(c_s, c_l)
        c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
        scale_s = torch.exp(c_s - c)
        w_l = alpha_l * torch.exp((-mean[:, 3] / tau - c).clamp(max=_LOG_WEIGHT_MAX))
        liquid_value = torch.cat([mean[:, :3] * diffuse[:, None] + specular[:, None], mean[:, 3:], n_l], dim=-1)
        total_weight = weight_s * scale_s + w_l
        blended = (solid_sum * scale_s[:, None] + w_l[:, None] * liquid_value) / total_weight.clamp(min=1e-30)[:, None]
        alpha = 1.0 - (1.0 - alpha_s) * (1.0 - alpha_l)
        best_lw = lw.detach().new_zeros(count).scatter_reduce_(0, slot, lw.detach(), "amax")
        pick_liquid = w_l.detach() > (best_w * scale_s if best_w is not None else 0.0)
    else:
        blended = solid_sum / weight_s.clamp(min=1e-30)[:, None]
        alpha = alpha_s
        pick_liquid = torch.zeros(count, dtype=torch.bool, device=bg.device)
    premultiplied = alpha[:, None] * blended
    rgb = premultiplied[:, :3] + (1.0 - alpha)[:, None] * bg[pixels]
    out = torch.cat([rgb, alpha[:, None], premultiplied[:, 3:]], dim=-1)
    with torch.no_grad():  # the particle weighing most (for segmentation)
        top = torch.full((count,), -1, dtype=torch.int64, device=bg.device)
        if has_solid:
            hit = (w > 0) & (w == best_w[slot]) & ~pick_liquid[slot]
            top[slot[hit]] = particle[hit]
        if has_liquid:
            hit = (lw > 0) & (lw == best_lw[slot]) & pick_liquid[slot]
            top[slot[hit]] = particle[hit]
    return out, top


class _Splats(torch.autograd.Function):
    """Chunked blending of (pixel, particle) pairs; backward recomputes each chunk, so memory stays
    per chunk."""

    @staticmethod
    def forward(ctx, plan, width, opacity, liquid_scale, liquid, bg, xy, z, sigma, tau, color, feat, light, intensity,
                ambient):
        channels = 3 + 1 + feat.shape[1] + 3
        out = torch.zeros((bg.shape[0], channels), dtype=bg.dtype, device=bg.device)
        out[:, :3] = bg
        top = torch.full((bg.shape[0],), -1, dtype=torch.int64, device=bg.device)
        for chunk in plan:
            result, best = _composite(chunk, width, bg, xy, z, sigma, tau, color, feat, liquid, light, intensity,
                                      ambient, opacity, liquid_scale)
            out[chunk[0]] = result
            top[chunk[0]] = best
        ctx.plan, ctx.width, ctx.opacity, ctx.liquid_scale = plan, width, opacity, liquid_scale
        ctx.save_for_backward(liquid, bg, xy, z, sigma, tau, color, feat, light, intensity, ambient)
        ctx.mark_non_differentiable(top)
        return out, top

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_top):
        liquid, *inputs = ctx.saved_tensors
        need = ctx.needs_input_grad[5:]
        if not any(need):
            return (None,) * 15
        leaves = [x.detach().requires_grad_(bool(n)) for x, n in zip(inputs, need)]
        grads = [torch.zeros_like(x) if n else None for x, n in zip(inputs, need)]
        if need[0]:  # pixels without particles show the background unchanged
            grads[0] = g_out[:, :3].clone()
            for chunk in ctx.plan:
                grads[0][chunk[0]] = 0.0
        wanted = [i for i, n in enumerate(need) if n]
        bg, xy, z, sigma, tau, color, feat, light, intensity, ambient = leaves
        for chunk in ctx.plan:
            with torch.enable_grad():
                result, _ = _composite(chunk, ctx.width, bg, xy, z, sigma, tau, color, feat, liquid, light, intensity,
                                       ambient, ctx.opacity, ctx.liquid_scale)
            if not result.requires_grad:
                continue
            got = torch.autograd.grad(result, [leaves[i] for i in wanted], g_out[chunk[0]], allow_unused=True)
            for i, g in zip(wanted, got):
                if g is not None:
                    grads[i] += g
        return (None, None, None, None, None, *grads)


def _pairs_by_box_size(x, y, r, x0, y0, nx, ny, width) -> tuple[torch.Tensor, torch.Tensor]:
    """(particle, pixel) of every pixel centre strictly within ``r`` of (x, y) inside each
    particle's box (x0, y0, nx, ny). Particles with the same box size are handled together as one
    (members, ny, nx) broadcast, so no per-pair gathers are needed."""
    size_key = nx * (int(ny.max()) + 1) + ny
    order = torch.argsort(size_key, stable=True)
    keys, counts = torch.unique_consecutive(size_key[order], return_counts=True)
    particles, pixels = [], []
    for members, key in zip(torch.split(order, counts.tolist()), keys.tolist()):
        bx, by = int(nx[members[0]]), int(ny[members[0]])
        if bx == 0 or by == 0:
            continue
        col = x0[members][:, None, None] + torch.arange(bx, device=x.device)[None, None, :]
        row = y0[members][:, None, None] + torch.arange(by, device=x.device)[None, :, None]
        inside = ((col + 0.5 - x[members][:, None, None]) ** 2 + (row + 0.5 - y[members][:, None, None]) ** 2
                  < (r[members] ** 2)[:, None, None])
        particles.append(members[:, None, None].expand_as(inside)[inside])
        pixels.append((row * width + col)[inside])
    if not particles:
        return x0.new_zeros(0), x0.new_zeros(0)
    return torch.cat(particles), torch.cat(pixels)


def _plan(xy: torch.Tensor, reach: torch.Tensor, valid: torch.Tensor, height: int, width: int,
          budget_pairs: int) -> list[tuple[torch.Tensor, ...]]:
    """Chunks of (pixel, particle) pairs: every pixel whose centre lies within ``reach`` px of a
    particle's projection ``xy``, sorted by pixel, cut at pixel boundaries into chunks of about
    ``budget_pairs`` pairs. Each chunk is (pixels (U,), slot (M,), particle (M,))."""
    device = xy.device
    count = xy.shape[0]
    x, y, r = xy[:, 0].double(), xy[:, 1].double(), reach.double()
    x0 = torch.ceil(x - r - 0.5).clamp(min=0)
    x1 = torch.floor(x + r - 0.5).clamp(max=width - 1)
    y0 = torch.ceil(y - r - 0.5).clamp(min=0)
    y1 = torch.floor(y + r - 0.5).clamp(max=height - 1)
    ok = valid & torch.isfinite(x) & torch.isfinite(y) & torch.isfinite(r) & (x1 >= x0) & (y1 >= y0)
    x0, x1, y0, y1 = (torch.where(ok, t, torch.zeros_like(t)).long() for t in (x0, x1, y0, y1))
    nx = torch.where(ok, x1 - x0 + 1, torch.zeros_like(x0))
    ny = torch.where(ok, y1 - y0 + 1, torch.zeros_like(y0))
    if int((nx * ny).sum()) == 0:
        return []
    particle, pixel = _pairs_by_box_size(x, y, r, x0, y0, nx, ny, width)
    if pixel.numel() == 0:
        return []
    # sort by pixel, then particle (a unique key; int32 sorts about twice as fast where it fits)
    key = pixel * count + particle
    if height * width * count < 2**31:
        key = key.int()
    order = torch.sort(key).indices
    pixel, particle = pixel[order], particle[order]
    starts = torch.ones_like(pixel, dtype=torch.bool)
    starts[1:] = pixel[1:] != pixel[:-1]
    size = pixel.shape[0]
    bounds = torch.nonzero(starts).reshape(-1).tolist() + [size]  # first pair of every pixel
    cuts = [0]
    while cuts[-1] < size:  # greedy: as many whole pixels as fit the budget, at least one
        begin, limit = cuts[-1], cuts[-1] + budget_pairs
        if limit >= size:
            cuts.append(size)
            continue
        end = bounds[bisect.bisect_right(bounds, limit) - 1]
        cuts.append(end if end > begin else bounds[bisect.bisect_right(bounds, begin)])
    plan = []
    for begin, end in zip(cuts[:-1], cuts[1:]):
        head = starts[begin:end].clone()
        head[0] = True
        slot = torch.cumsum(head.long(), 0) - 1
        plan.append((pixel[begin:end][head], slot, particle[begin:end]))
    return plan


# --------------------------------------------------------------------------------------------
# Public renderer
# --------------------------------------------------------------------------------------------


def _background(camera: Camera, dtype, device, background, ground, light, intensity, ambient):
    """Background colour (P, 3), camera depth (P,) (inf = none) and camera-space normal (P, 3)."""
    count = camera.height * camera.width
    if ground is None:
        colour = torch.as_tensor(background, dtype=dtype, device=device).reshape(-1, 3).expand(count, 3)
        return colour, torch.full((count,), float("inf"), dtype=dtype, device=device), torch.zeros(
            (count, 3), dtype=dtype, device=device)
    from .spheres import _ground

    origins, dirs = (x.reshape(-1, 3) for x in camera.rays(device, dtype))
    checker = torch.as_tensor(ground.get("checker_colors", ((0.85, 0.85, 0.85), (0.35, 0.35, 0.35))), dtype=dtype,
                              device=device)
    sky = torch.as_tensor(ground.get("sky_color", (0.55, 0.7, 0.9)), dtype=dtype, device=device)
    colour, t, normal = _ground(origins, dirs, float(ground.get("height", 0.0)), float(ground.get("checker_size", 0.5)),
                                checker, sky, light, intensity, ambient, 1.0 / camera.focal(), camera.orthographic)
    rot = camera.rotation(device, dtype)
    depth = t * (dirs @ rot[2])
    normal_cam = torch.where(torch.isfinite(t)[:, None], (rot @ normal).expand(count, 3), torch.zeros_like(dirs))
    return colour, depth, normal_cam


def render_particles(
    camera: Camera,
    positions: torch.Tensor,
    colors: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    material: torch.Tensor | None = None,
    liquid: torch.Tensor | None = None,
    background=(0.08, 0.09, 0.12),
    ground: Mapping | None = None,
    light_direction=(-0.4, 0.3, -1.0),
    light_intensity=0.8,
    ambient=0.35,
    opacity: float = 0.95,
    splat_scale: float = 0.6,
    liquid_smoothing: float = 2.0,
    depth_softness: float = 1.0,
    flow_to: Mapping[str, tuple[torch.Tensor, Camera | None]] | None = None,
    coverage_threshold: float = 0.5,
    budget_bytes: int = _CHUNK_BYTES,
) -> dict:
    """Render N particles as Gaussian splats.

    Args:
        positions: (N, 3) world positions [m], float32 or float64 (sets the output dtype).
        colors: (N, 3) albedo in [0, 1]. sigmas: (N,) splat standard deviation [m].
        material: (N,) long material id (segmentation is id + 1; default 0 for all).
        liquid: (N,) bool, particles drawn as one liquid surface instead of splats (default none).
            ``splat_scale`` (sigma / particle spacing) normalises its density; its kernel is
            ``liquid_smoothing`` times wider than a splat, for a smooth surface.
        background: colour behind everything when ``ground`` is None; ``ground``: a dict with
            ``height``, ``checker_size``, ``checker_colors``, ``sky_color`` for a checkered ground
            plane and sky (as the sphere renderer draws).
        depth_softness: blend depth scale tau in (median) splat sigmas: a splat tau [m] behind the
            front one weighs e^-1 as much.
        light_direction: direction light travels; ``light_intensity``, ``ambient`` (tensors allowed).
        flow_to: name -> (the same particles' positions (N, 3) in another frame, that frame's
            camera or None for this one); adds layer ``name`` (H, W, 2) [px] and ``name + "_depth"``
            (H, W), the camera depth of the moved points in the other frame.
        budget_bytes: memory for the intermediates of one chunk of (pixel, particle) pairs.

    Returns ``rgb`` (H, W, 3), ``alpha`` (H, W) (differentiable); ``depth`` (H, W) camera z [m]
    (composited; the background's where alpha < ``coverage_threshold``), ``normal`` (H, W, 3)
    camera space, ``segmentation`` (H, W) int32 (0 background, material + 1), ``particle`` (H, W)
    int64 index of the particle contributing most (-1 none), and the flow layers.
    """
    if not torch.is_tensor(positions) or positions.dim() != 2 or positions.shape[1] != 3 \
            or not positions.is_floating_point():
        raise AssetError(f"positions must be a float tensor of shape (N, 3), got {getattr(positions, 'shape', None)}",
                         field="positions")
    device, dtype = positions.device, positions.dtype
    count = positions.shape[0]
    colors = torch.as_tensor(colors).to(device=device, dtype=dtype).expand(count, 3)
    sigmas = torch.as_tensor(sigmas).to(device=device, dtype=dtype).expand(count)
    material = torch.zeros(count, dtype=torch.int64, device=device) if material is None else material.to(device)
    liquid = torch.zeros(count, dtype=torch.bool, device=device) if liquid is None else liquid.to(device).bool()
    def par(value):
        if torch.is_tensor(value):
            return value.to(device=device, dtype=dtype)
        return torch.tensor(value, device=device, dtype=dtype)

    light_world = par(light_direction)
    light_world = light_world / light_world.norm()
    intensity, amb = par(light_intensity).reshape(()), par(ambient).reshape(())
    rot = camera.rotation(device, dtype)
    light = rot @ light_world
    height, width = camera.height, camera.width

    bg, bg_depth, bg_normal = _background(camera, dtype, device, background, ground, light_world, intensity, amb)
    xy, z = camera.project(positions)
    scale = camera.focal() if camera.orthographic else camera.focal() / z.clamp(min=_NEAR)
    sigma_px = sigmas * scale
    if bool(liquid.any()):
        sigma_px = torch.where(liquid, sigma_px * liquid_smoothing, sigma_px)
    valid = (z > _NEAR) & torch.isfinite(z) & (sigma_px > 0)
    features = [z[:, None]]
    names = list(flow_to or {})
    for name in names:
        other, other_camera = flow_to[name]
        moved, moved_z = (other_camera or camera).project(other.to(device=device, dtype=dtype))
        features += [moved - xy, moved_z[:, None]]
    feat = torch.cat(features, dim=1)
    element = torch.finfo(dtype).bits // 8
    budget = max(64, budget_bytes // ((_VALUES_PER_PAIR + 4 * feat.shape[1]) * element))
    plan = _plan(xy.detach(), CUTOFF * sigma_px.detach(), valid, height, width, budget)
    liquid_scale = 1.0 / (2.0 * math.pi * (splat_scale * liquid_smoothing) ** 2 * _KERNEL_MASS)
    # one blend depth scale for the image (the median splat's), so blend weights stay ratio-invariant
    tau = (depth_softness * sigmas.detach().median()).clamp(min=1e-12) if count else sigmas.new_ones(())
    out, top = _Splats.apply(plan, width, float(opacity), liquid_scale, liquid & valid, bg.contiguous(), xy, z,
                             sigma_px, tau, colors, feat, light, intensity, amb)
    channels = feat.shape[1]
    rgb, alpha = out[:, :3].clamp(0.0, 1.0), out[:, 3].clamp(0.0, 1.0)
    summed, normal_sum = out[:, 4:4 + channels], out[:, 4 + channels:]
    covered = (alpha.detach() >= coverage_threshold) & (top >= 0)
    norm = torch.where(covered, out[:, 3], torch.ones_like(alpha))
    mean = summed / norm[:, None]
    depth = torch.where(covered, mean[:, 0], bg_depth)
    normal = torch.where(covered[:, None], torch.nn.functional.normalize(normal_sum, dim=-1), bg_normal)
    segmentation = torch.where(covered, material[top.clamp(min=0)] + 1, torch.zeros_like(top)).to(torch.int32)
    layers = {"rgb": rgb.reshape(height, width, 3), "alpha": alpha.reshape(height, width),
              "depth": depth.reshape(height, width), "normal": normal.reshape(height, width, 3),
              "segmentation": segmentation.reshape(height, width),
              "particle": torch.where(covered, top, torch.full_like(top, -1)).reshape(height, width)}
    if names:
        from .flow import surface_points

        points = surface_points(camera, bg_depth.detach().reshape(height, width)).reshape(-1, 3)
        pixel_xy = camera.project(points)[0]
    for k, name in enumerate(names):
        other_camera = flow_to[name][1]
        if other_camera is None or other_camera is camera:
            bg_flow, bg_z = torch.zeros_like(bg[:, :2]), bg_depth
        else:
            moved_bg, bg_z = other_camera.project(points)
            bg_flow = moved_bg - pixel_xy
            bg_z = torch.where(torch.isfinite(bg_depth), bg_z, bg_depth)
        column = 1 + 3 * k
        layers[name] = torch.where(covered[:, None], mean[:, column:column + 2], bg_flow).reshape(height, width, 2)
        layers[name + "_depth"] = torch.where(covered, mean[:, column + 2], bg_z).reshape(height, width)
    return layers


def particle_flow_occlusion(flow: torch.Tensor, moved_depth: torch.Tensor, segmentation: torch.Tensor,
                            other_depth: torch.Tensor, other_segmentation: torch.Tensor,
                            rel_tol: float = 0.05) -> torch.Tensor:
    """Occlusion mask (H, W) bool of a flow field: True where the moved point leaves the image, lands
    on another surface (segmentation id) in the other frame, or lies behind what that frame shows
    there (camera depth off by more than ``rel_tol``)."""
    height, width = segmentation.shape
    rows, cols = torch.meshgrid(torch.arange(height, device=flow.device), torch.arange(width, device=flow.device),
                                indexing="ij")
    target = torch.stack([cols, rows], dim=-1).to(flow.dtype) + 0.5 + flow.detach()
    col, row = torch.floor(target[..., 0]).long(), torch.floor(target[..., 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    col, row = col.clamp(0, width - 1), row.clamp(0, height - 1)
    same = other_segmentation[row, col] == segmentation
    seen = other_depth[row, col]
    moved = moved_depth.detach()
    both_far = ~torch.isfinite(seen) & ~torch.isfinite(moved)
    close = (seen - moved).abs() <= rel_tol * moved.abs().clamp(min=1e-6)
    return ~(inside & same & (both_far | close))


def render_particle_frames(cameras: Camera | Sequence[Camera], positions: torch.Tensor, colors: torch.Tensor,
                           sigmas: torch.Tensor, *, flow: bool = True, progress: Callable[[int], None] | None = None,
                           keys: Sequence[str] = ("rgb", "alpha", "depth", "normal", "segmentation", "particle"),
                           **options) -> dict:
    """Render F frames of particles ``positions`` (F, N, 3) (one camera, or one per frame); with
    ``flow``, add exact ``flow_forward`` (t -> t+1) / ``flow_backward`` (t -> t-1) (F, H, W, 2) [px]
    and ``occlusion_forward`` / ``occlusion_backward`` (F, H, W) bool (True in the frame without a
    neighbour). ``options`` go to :func:`render_particles`; ``keys`` are the layers kept. Layers
    are stacked over frames; frames are dropped as soon as their flow is done, so memory is the
    stacked layers plus two frames."""
    frames = positions.shape[0]
    cams = [cameras] * frames if isinstance(cameras, Camera) else list(cameras)
    if len(cams) != frames:
        raise AssetError(f"got {len(cams)} cameras for {frames} frames", field="cameras")
    kept = list(keys) + (["flow_forward", "flow_backward", "occlusion_forward", "occlusion_backward"] if flow else [])
    lists = _FrameStack(kept, frames, in_place=not torch.is_grad_enabled())
    previous = None
    for t in range(frames):
        flow_to = {}
        if flow and t + 1 < frames:
            flow_to["flow_forward"] = (positions[t + 1].detach(), None if cams[t + 1] is cams[t] else cams[t + 1])
        if flow and t > 0:
            flow_to["flow_backward"] = (positions[t - 1].detach(), None if cams[t - 1] is cams[t] else cams[t - 1])
        out = render_particles(cams[t], positions[t], colors[t] if colors.dim() == 3 else colors,
                               sigmas[t] if sigmas.dim() == 2 else sigmas, flow_to=flow_to, **options)
        for key in keys:
            lists.put(key, t, out[key])
        if flow:
            blank = torch.zeros(out["depth"].shape + (2,), dtype=out["depth"].dtype, device=out["depth"].device)
            hidden = torch.ones(out["depth"].shape, dtype=torch.bool, device=out["depth"].device)
            if t > 0:  # the previous frame's forward flow and this frame's backward flow need both frames
                lists.put("occlusion_forward", t - 1, particle_flow_occlusion(
                    previous["flow_forward"], previous["flow_forward_depth"], previous["segmentation"],
                    out["depth"], out["segmentation"]))
                lists.put("flow_backward", t, out["flow_backward"])
                lists.put("occlusion_backward", t, particle_flow_occlusion(
                    out["flow_backward"], out["flow_backward_depth"], out["segmentation"], previous["depth"],
                    previous["segmentation"]))
            else:
                lists.put("flow_backward", t, blank)
                lists.put("occlusion_backward", t, hidden)
            lists.put("flow_forward", t, out.get("flow_forward", blank))
            lists.put("occlusion_forward", t, hidden)  # replaced when the next frame arrives
            previous = {key: out[key] for key in ("depth", "segmentation", "flow_forward", "flow_forward_depth")
                        if key in out}
        if progress is not None:
            progress(t + 1)
    return lists.finish()


class _FrameStack:
    """Per-frame layers stacked over frames: written in place into preallocated tensors when no
    gradients are recorded (one copy in memory), else kept as lists and stacked at the end."""

    def __init__(self, keys, frames: int, in_place: bool):
        self.keys, self.frames, self.in_place = list(keys), frames, in_place
        self.data: dict = {key: (None if in_place else [None] * frames) for key in self.keys}

    def put(self, key: str, frame: int, value: torch.Tensor) -> None:
        if not self.in_place:
            self.data[key][frame] = value
            return
        if self.data[key] is None:
            self.data[key] = value.new_empty((self.frames,) + tuple(value.shape))
        self.data[key][frame] = value

    def finish(self) -> dict:
        if self.in_place:
            return dict(self.data)
        return {key: torch.stack(self.data.pop(key)) for key in self.keys}


# --------------------------------------------------------------------------------------------
# MPM scenes
# --------------------------------------------------------------------------------------------


def _mpm_options(world, trajectory, params) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Renderer options, colours (N, 3) and splat sigmas (N,) [m] of an MPM scene."""
    from ..solvers.mpm import MATERIAL_KINDS
    from .scene import scene_render_options

    spec = world.spec
    mpm = spec.mpm
    model = trajectory.model
    light = scene_render_options(world, params)
    options = dict(light_direction=light["light_direction"], light_intensity=light["light_intensity"],
                   ambient=light["ambient"], splat_scale=mpm.splat_scale, material=model.particle_material)
    if mpm.dim == 3 and spec.ground.enabled:
        options["ground"] = dict(height=spec.ground.height, checker_size=spec.ground.checker_size,
                                 checker_colors=spec.ground.colors, sky_color=spec.light.sky_color)
    else:
        options["background"] = mpm.background if mpm.dim == 2 else spec.light.sky_color
    if mpm.liquid_render == "surface":
        kind = model.material_kind.to(model.particle_material.device)[model.particle_material]
        options["liquid"] = kind == MATERIAL_KINDS["liquid"]
    sigmas = mpm.splat_scale * model.particle_volume ** (1.0 / mpm.dim)
    return options, model.particle_color, sigmas


def _cameras(world, count: int, cameras) -> list[Camera]:
    if cameras is None:
        return [Camera.from_spec(world.spec.camera)] * count
    if isinstance(cameras, Camera):
        return [cameras] * count
    return list(cameras)


def render_mpm(world, trajectory, params: Mapping[str, torch.Tensor] | None = None, *, frames: slice | None = None,
               cameras: Camera | Sequence[Camera] | None = None, flow: bool = False) -> dict:
    """Render (a slice of) the frames of an MPM scene trajectory (``hybridsim.sim.mpm``): layers
    stacked over frames (``rgb`` (F, H, W, 3), ``alpha``, ``depth``, ``normal``, ``segmentation``:
    0 background, material m + 1), differentiable w.r.t. the particle positions (hence the
    simulation parameters), the particle colours and the light in ``params``. ``cameras``: one
    camera or one per rendered frame (default: the scene's)."""
    positions = trajectory.world_positions()
    if frames is not None:
        positions = positions[frames]
    options, colors, sigmas = _mpm_options(world, trajectory, params)
    return render_particle_frames(_cameras(world, positions.shape[0], cameras), positions, colors, sigmas, flow=flow,
                                  **options)


def render_mpm_layers(world, trajectory, *, cameras: Sequence[Camera] | None = None,
                      progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Render every frame (no gradients) plus exact flow; returns (rgb uint8 (F+1, H, W, 3), layers)
    with depth, segmentation, normal, alpha, flow_forward / flow_backward (F+1, H, W, 2) [px] and
    occlusion masks, as numpy arrays (intrinsics / extrinsics are the caller's)."""
    from .spheres import to_uint8

    with torch.no_grad():
        positions = trajectory.world_positions().detach()
        options, colors, sigmas = _mpm_options(world, trajectory, None)
        layers = render_particle_frames(_cameras(world, positions.shape[0], cameras), positions, colors.detach(),
                                        sigmas.detach(), flow=True, progress=progress,
                                        keys=("rgb", "alpha", "depth", "normal", "segmentation"), **options)
    rgb = to_uint8(layers.pop("rgb"))
    stacked = {}
    for key in list(layers):  # one layer at a time, so only one extra copy is alive
        value = layers.pop(key).cpu().numpy()
        stacked[key] = value.astype(np.float32, copy=False) if value.dtype.kind == "f" else value
    return rgb, stacked
