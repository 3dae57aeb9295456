"""Differentiable emission-absorption ray marching of a 3D density grid (smoke, fog), through any
scene camera, with depth, mask and optical-flow layers and optional single-scattering-like light.

Grid convention (shared with the 3D fluid solver): ``density`` (nx, ny, nz), index (i, j, k) =
world (x, y, z), z up; cell (i, j, k) is centred at ``origin + (i + 0.5, j + 0.5, k + 0.5) *
cell_size``, so the grid fills the box [origin, origin + (nx, ny, nz) * cell_size]. The density
between cell centres is trilinear (torch ``grid_sample``), held constant from the outer cell
centres to the box faces.

Each pixel ray is clipped to the box (and to ``background_depth``, so opaque surfaces drawn by
the rasteriser hide the smoke behind them) and sampled at ``S`` evenly spaced midpoints of its
clipped segment; ``S`` is the same for every ray of a call (``ceil(longest segment / step_size)``),
so the march is one batched tensor program (rays that miss the box, and samples that can only see
empty cells, are not marched). Extinction is ``opacity * max(density, 0)`` [1/m]; a
sample of length ``delta`` absorbs ``a = 1 - exp(-opacity * rho * delta)`` and weighs
``w = T * a`` (``T`` the transmittance in front of it), so a uniform slab of thickness L gives
``alpha = 1 - exp(-opacity * rho * L)`` up to the midpoint rule. Rays are marched in chunks; with
gradients on, each chunk is checkpointed (recomputed in backward), so memory stays per chunk.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import AssetError
from .camera import Camera

__all__ = ["render_volume", "light_transmittance"]

_CHUNK_SAMPLES = 2**18  # samples (ray x step) marched at once: bounds memory per chunk (and stays in cache)
_ALPHA_MIN = 1e-4  # below this coverage a pixel has no volume depth / flow


def light_transmittance(density: torch.Tensor, cell_size: float, light_direction, opacity=1.0) -> torch.Tensor:
    """Transmittance (nx, ny, nz) in [0, 1] from outside the grid to every cell centre along the light.

    ``light_direction`` is the direction the light travels (world, any length). The optical
    depth is swept slice by slice along the light's dominant axis: a cell's value is its upstream
    neighbour's in the previous slice (bilinear, at most one cell sideways; light from outside the
    grid enters unattenuated) plus the trapezoid of the extinction between them. Exact for a
    light along an axis; differentiable w.r.t. ``density`` and ``opacity``. O(cells) per frame.
    """
    light = torch.as_tensor(light_direction, dtype=torch.float64).reshape(3)
    norm = float(light.norm())
    if not norm > 0 or not math.isfinite(norm):
        raise AssetError(f"light_direction must be a non-zero finite vector, got {light.tolist()}",
                         field="light_direction")
    light = light / norm
    axis = int(light.abs().argmax())
    others = [a for a in range(3) if a != axis]
    step = float(cell_size) / abs(float(light[axis]))  # path length between two slices [m]
    shift = [-float(light[a]) / abs(float(light[axis])) for a in others]  # upstream offset [cells]
    sigma = opacity * density.clamp(min=0.0)
    sigma = sigma.permute(axis, *others)
    if float(light[axis]) < 0:
        sigma = sigma.flip(0)  # sweep in the direction the light travels
    half = 0.5 * step
    slices = [half * sigma[0]]
    for k in range(1, sigma.shape[0]):
        exit_depth = slices[-1] + half * sigma[k - 1]
        slices.append(_shift2d(exit_depth, shift[0], shift[1]) + half * sigma[k])
    tau = torch.stack(slices)
    if float(light[axis]) < 0:
        tau = tau.flip(0)
    order = [axis, *others]
    tau = tau.permute(*[order.index(a) for a in range(3)])
    return torch.exp(-tau)


def _shift2d(image: torch.Tensor, sb: float, sc: float) -> torch.Tensor:
    """image sampled bilinearly at (p + sb, q + sc), |sb|, |sc| <= 1 cell, zero outside."""
    nb, nc = image.shape
    padded = torch.nn.functional.pad(image[None, None], (1, 2, 1, 2))[0, 0]
    ib, ic = math.floor(sb), math.floor(sc)
    fb, fc = sb - ib, sc - ic
    b0, c0 = ib + 1, ic + 1

    def at(db, dc):
        return padded[b0 + db:b0 + db + nb, c0 + dc:c0 + dc + nc]

    return ((1 - fb) * ((1 - fc) * at(0, 0) + fc * at(0, 1)) + fb * ((1 - fc) * at(1, 0) + fc * at(1, 1)))


def _box_clip(origins, dirs, lo, hi):
    """Ray parameters (t_enter, t_exit) of the box [lo, hi]; t_exit < t_enter where missed."""
    safe = torch.where(dirs.abs() > 1e-12, dirs, torch.full_like(dirs, 1e-12) * torch.where(dirs < 0, -1.0, 1.0))
    inv = 1.0 / safe
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def _march(grid_origin, grid_dir, cam_origin, cam_dir, cos_forward, t_near, t_far, first, centres, volume, color,
           opacity, ambient, intensity, focal, principal, steps, run, lit, flow, per_cell_color, orthographic):
    """March R rays through the volume channels.

    Ray r takes ``steps`` evenly spaced midpoint samples over [t_near, t_far]; only ``run`` of
    them are evaluated, from sample ``first[r]`` on (the others lie where the density is 0).
    Grid-space and camera-space ray origins / directions make every sample position one
    multiply-add. Returns (R, 5 or 7): premultiplied rgb, alpha, weighted camera depth sum and,
    with ``flow``, the weighted flow sum [px].
    """
    delta = (t_far - t_near) / steps  # (R,)
    index = first[:, None] + torch.arange(run, device=t_near.device, dtype=t_near.dtype) + 0.5
    t = t_near[:, None] + delta[:, None] * index  # (R, S)
    grid = grid_origin[:, None, :] + t[..., None] * grid_dir[:, None, :]
    samples = torch.nn.functional.grid_sample(volume, grid[None, None], mode="bilinear", padding_mode="border",
                                              align_corners=False)[0, :, 0]  # (C, R, S)
    tau = (opacity * delta)[:, None] * samples[0].clamp(min=0.0)  # optical depth of each sample
    if run != steps or bool((first > 0).any()):
        tau = tau * (index < steps)  # samples past the segment's end
    optical = torch.cumsum(tau, dim=1)
    weight = torch.exp(tau - optical) * -torch.expm1(-tau)  # T in front of the sample x its absorption
    alpha = -torch.expm1(-optical[:, -1])
    channel = 1
    shaded = weight
    if lit:
        shaded = weight * (ambient + intensity * samples[channel])
        channel += 1
    if per_cell_color:
        rgb = (shaded[None] * samples[channel:channel + 3]).sum(-1).T
        channel += 3
    else:
        rgb = shaded.sum(1)[:, None] * color
    depth_sum = (weight * t).sum(1) * cos_forward  # camera z = t * cos(ray, forward)
    columns = [rgb, alpha[:, None], depth_sum[:, None]]
    if flow:
        # moved sample in camera space: ray point + (velocity in camera axes) * frame_dt
        moved = [cam_origin[:, a, None] + t * cam_dir[:, a, None] + samples[channel + a] for a in range(3)]
        scale = focal if orthographic else focal / moved[2].clamp(min=1e-6)
        dx = ((moved[0] * scale + principal[0] - centres[:, 0, None]) * weight).sum(1)
        dy = ((moved[1] * scale + principal[1] - centres[:, 1, None]) * weight).sum(1)
        columns += [dx[:, None], dy[:, None]]
    return torch.cat(columns, dim=1)


def _occupied_box(density, lo, cell_size):
    """Corners of the region where the trilinear density can be non-zero (the bounding box of
    cells with density > 0, grown by one cell centre each way), or None if all cells are <= 0."""
    occupied = density.detach() > 0
    if not bool(occupied.any()):
        return None
    bounds = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        used = torch.nonzero(occupied.any(dim=others)).reshape(-1)
        bounds.append((float(used[0]) - 0.5, float(used[-1]) + 1.5))
    low = lo + cell_size * torch.tensor([b[0] for b in bounds], dtype=lo.dtype, device=lo.device)
    high = lo + cell_size * torch.tensor([b[1] for b in bounds], dtype=lo.dtype, device=lo.device)
    return low, high


def render_volume(
    density: torch.Tensor,
    *,
    origin,
    cell_size: float,
    camera: Camera,
    color=(0.95, 0.95, 0.95),
    opacity=1.0,
    background=None,
    background_depth: torch.Tensor | None = None,
    velocity: torch.Tensor | None = None,
    frame_dt: float | None = None,
    flow_camera: Camera | None = None,
    light_direction=None,
    ambient=0.35,
    light_intensity=0.65,
    light: torch.Tensor | None = None,
    step_size: float | None = None,
    coverage_threshold: float = 0.5,
    segment_id: int = 1,
    skip_empty: bool | None = None,
    chunk_samples: int = _CHUNK_SAMPLES,
) -> dict:
    """Render a density grid by emission-absorption ray marching.

    Args:
        density: (nx, ny, nz) float32/float64 (sets the output dtype), index (i, j, k) = world
            (x, y, z); negative values count as 0. ``origin`` (3,) [m] is the grid's min corner,
            ``cell_size`` [m] the cell edge.
        camera: perspective or orthographic ``Camera``.
        color: (3,) albedo in [0, 1], or (nx, ny, nz, 3) per cell (trilinear like the density).
        opacity: extinction per unit density [1/m per density unit]; float or scalar tensor.
        background: (H, W, 3) or (3,) colour the volume is composited over (default black, so
            ``rgb`` is then premultiplied colour).
        background_depth: (H, W) camera z [m] of opaque surfaces (the rasterisers' ``depth``
            layer: camera z of the first hard hit, inf where none): the march stops there (a
            hard cut: no gradient w.r.t. ``background_depth``).
        velocity: (nx, ny, nz, 3) cell-centred world velocity [m/s]; with ``frame_dt`` [s] adds
            the ``flow`` layer. ``flow_camera`` (default ``camera``): the camera the moved samples
            are projected with (the next frame's, for a moving camera), so flow includes its motion.
        light_direction: direction the light travels (world); None renders pure emission
            (every sample shows ``color``). With a light, a sample shows ``color * (ambient +
            light_intensity * T_light)``, ``T_light`` the transmittance from outside the grid
            (``light_transmittance``, swept once per call; pass ``light`` (nx, ny, nz) to reuse one).
        step_size: largest march step [m] (default ``cell_size``); every ray takes the same number
            of evenly spaced samples over its clipped segment.
        coverage_threshold: alpha at and above which ``mask`` / ``segmentation`` are set.
        segment_id: the id ``segmentation`` shows where covered.
        skip_empty: march only the samples of each ray near cells with density > 0 (the box of
            those cells grown by one cell), at the positions the full march uses, so every layer
            is the same. Default: on unless a gradient w.r.t. ``density`` is recorded (the
            skipped zero cells would get no gradient; the full march gives them one).
        chunk_samples: rays are marched in chunks of about this many samples.

    Returns a dict of (H, W, ...) layers, dtype of ``density``:
        ``rgb`` (H, W, 3) in [0, 1], composited over ``background``; ``alpha`` (H, W) coverage
        ``1 - T`` of the whole march; both differentiable w.r.t. density, colour, opacity, the
        light parameters (and ``background``).
        ``depth`` (H, W) [m] camera z (as the rasterisers' depth): the expected depth of the
        volume, ``sum(w_s z_s) / alpha``, where alpha >= 1e-4; elsewhere ``background_depth``
        (inf without one). Differentiable where defined.
        ``mask`` (H, W) bool ``alpha >= coverage_threshold``; ``segmentation`` (H, W) int32
        ``segment_id`` there, 0 elsewhere.
        ``flow`` (H, W, 2) [px] (with ``velocity``): forward optical flow over ``frame_dt``, the
        opacity-weighted mean ``sum(w_s (project(x_s + v(x_s) dt) - pixel)) / alpha`` of the
        projected motion of the ray's samples; 0 where alpha < 1e-4. Differentiable w.r.t.
        velocity and density.
        ``transmittance`` (H, W) ``1 - alpha`` (the fraction of the background seen).
    """
    if not torch.is_tensor(density) or density.dim() != 3 or not density.is_floating_point():
        raise AssetError(f"density must be a float tensor of shape (nx, ny, nz), got {getattr(density, 'shape', None)}",
                         field="density")
    cell_size = float(cell_size)
    if not cell_size > 0 or not math.isfinite(cell_size):
        raise AssetError(f"cell_size must be positive, got {cell_size}", field="cell_size")
    device, dtype = density.device, density.dtype
    cells = density.shape
    height, width = camera.height, camera.width
    pixels = height * width

    def par(value):
        return value.to(device=device, dtype=dtype) if torch.is_tensor(value) else torch.tensor(value, device=device,
                                                                                              dtype=dtype)

    lo = par(origin).reshape(3)
    extent = par([c * cell_size for c in cells])
    color = par(color)
    per_cell_color = color.dim() == 4
    if per_cell_color and tuple(color.shape) != (*cells, 3):
        raise AssetError(f"per-cell color must have shape {(*cells, 3)}, got {tuple(color.shape)}", field="color")
    if not per_cell_color:
        color = color.reshape(3)
    opacity = par(opacity).reshape(())
    flow = velocity is not None
    if flow:
        if tuple(velocity.shape) != (*cells, 3):
            raise AssetError(f"velocity must have shape {(*cells, 3)}, got {tuple(velocity.shape)}", field="velocity")
        if frame_dt is None:
            raise AssetError("velocity needs frame_dt [s] to give flow in pixels per frame", field="frame_dt")
    step = cell_size if step_size is None else float(step_size)
    if not step > 0:
        raise AssetError(f"step_size must be positive, got {step}", field="step_size")

    channels = [density]
    lit = light_direction is not None or light is not None
    if lit:
        if light is None:
            light = light_transmittance(density, cell_size, light_direction, opacity)
        channels.append(light.to(dtype))
    if per_cell_color:
        channels += list(color.unbind(-1))
    rot = camera.rotation(device, dtype)
    flow_camera = camera if flow_camera is None else flow_camera
    flow_rot = flow_camera.rotation(device, dtype)
    if flow:  # velocity in the flow camera's axes times frame_dt: the displacement of a point over a frame
        channels += list(((velocity.to(dtype) @ flow_rot.T) * float(frame_dt)).unbind(-1))
    # grid_sample wants (N, C, D, H, W) with grid (x, y, z) indexing (W, H, D): ours is (x, y, z)
    volume = torch.stack(channels).permute(0, 3, 2, 1)[None]

    origins, dirs = (x.reshape(pixels, 3) for x in camera.rays(device, dtype))
    cos_forward = dirs @ rot[2]
    t_enter, t_exit = _box_clip(origins, dirs, lo, lo + extent)
    t_near = t_enter.clamp(min=0.0)
    if background_depth is not None:
        background_depth = par(background_depth).reshape(pixels)
        t_exit = torch.minimum(t_exit, background_depth / cos_forward)
    t_near, t_exit = t_near.detach(), t_exit.detach()
    hit = torch.nonzero(t_exit > t_near).reshape(-1)

    out_width = 7 if flow else 5
    summed = density.new_zeros(pixels, out_width)
    if skip_empty is None:
        skip_empty = not (torch.is_grad_enabled() and density.requires_grad)
    occupied = _occupied_box(density, lo, cell_size) if skip_empty and hit.numel() else None
    if skip_empty and occupied is None:
        hit = hit[:0]  # no density anywhere: nothing to march
    if hit.numel():
        steps = max(1, math.ceil(float((t_exit[hit] - t_near[hit]).max()) / step))
        first = torch.zeros_like(t_near)
        run = steps
        if occupied is not None:
            # march only the samples of each ray's segment that can see non-zero density; they
            # sit where the full march puts them, so the image does not change
            t_in, t_out = _box_clip(origins, dirs, *occupied)
            t_in, t_out = torch.maximum(t_in, t_near), torch.minimum(t_out, t_exit)
            hit = hit[(t_out[hit] > t_in[hit])]
            delta = ((t_exit - t_near) / steps).clamp(min=1e-30)
            first = (torch.ceil((t_in - t_near) / delta - 0.5) - 1.0).clamp(min=0.0)
            last = (torch.floor((t_out - t_near) / delta - 0.5) + 1.0).clamp(max=steps - 1.0)
            run = int((last[hit] - first[hit]).max()) + 1 if hit.numel() else 0
        rows = torch.arange(height, device=device, dtype=dtype)
        cols = torch.arange(width, device=device, dtype=dtype)
        centres = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1).reshape(pixels, 2) + 0.5
        grid_origin, grid_dir = (origins - lo) / extent * 2.0 - 1.0, dirs / extent * 2.0
        # the rays in the flow camera's frame: a moved sample is projected by that camera
        position = par(flow_camera.position)
        cam_origin, cam_dir = (origins - position) @ flow_rot.T, dirs @ flow_rot.T
        principal = (flow_camera.cx, flow_camera.cy)
        per_chunk = max(1, chunk_samples // max(run, 1))
        amb, intensity = par(ambient), par(light_intensity)
        differentiable = torch.is_grad_enabled() and any(
            torch.is_tensor(x) and x.requires_grad for x in (volume, color, opacity, amb, intensity))
        parts = []
        for begin in range(0, hit.numel(), per_chunk):
            index = hit[begin:begin + per_chunk]
            args = (grid_origin[index], grid_dir[index], cam_origin[index], cam_dir[index], cos_forward[index],
                    t_near[index], t_exit[index], first[index], centres[index], volume, color, opacity, amb,
                    intensity, flow_camera.focal(), principal, steps, run, lit, flow, per_cell_color,
                    flow_camera.orthographic)
            parts.append(checkpoint(_march, *args, use_reentrant=False) if differentiable else _march(*args))
        if parts:
            summed = summed.index_copy(0, hit, torch.cat(parts))

    alpha = summed[:, 3].clamp(0.0, 1.0)
    if background is None:
        background = torch.zeros(3, device=device, dtype=dtype)
    background = par(background)
    background = background.reshape(pixels, 3) if background.dim() == 3 else background.reshape(1, 3)
    rgb = (summed[:, :3] + (1.0 - alpha)[:, None] * background).clamp(0.0, 1.0)
    seen = alpha.detach() >= _ALPHA_MIN
    norm = torch.where(seen, alpha, torch.ones_like(alpha))
    far = background_depth.detach() if background_depth is not None else torch.full_like(alpha, float("inf"))
    depth = torch.where(seen, summed[:, 4] / norm, far)
    mask = alpha.detach() >= coverage_threshold
    layers = {"rgb": rgb.reshape(height, width, 3), "alpha": alpha.reshape(height, width),
              "depth": depth.reshape(height, width), "mask": mask.reshape(height, width),
              "segmentation": (mask.to(torch.int32) * int(segment_id)).reshape(height, width),
              "transmittance": (1.0 - alpha).reshape(height, width)}
    if flow:
        layers["flow"] = torch.where(seen[:, None], summed[:, 5:7] / norm[:, None],
                                     torch.zeros_like(summed[:, 5:7])).reshape(height, width, 2)
    return layers
