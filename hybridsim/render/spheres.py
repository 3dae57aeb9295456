"""Differentiable analytic ray tracing of spheres over a checkered ground plane (z-up world).

Every pixel ray is tested against every sphere in closed form (no mesh). Sphere edges are soft
(sigmoid of the signed distance to the silhouette), spheres are alpha-composited front to back per
pixel, and the ground (or sky) sits behind all of them, so gradients of any pixel loss reach sphere
centres, radii, colours and the lighting parameters. Hard layers (depth, segmentation, normals)
come from exact ray hits and carry no gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from hybridsim.errors import AssetError
from hybridsim.render.camera import Camera

__all__ = ["render_spheres", "render_frames", "to_uint8"]

_CHUNK_BYTES = 64 * 2**20  # budget for the pixels x spheres intermediates of one chunk
_VALUES_PER_PAIR = 48  # tensors of size (pixels, spheres) alive in one chunk, forward and backward


def render_spheres(
    camera: Camera,
    centers: torch.Tensor,
    radii: torch.Tensor,
    colors: torch.Tensor,
    *,
    ground_height=0.0,
    checker_size=0.5,
    checker_colors=((0.85, 0.85, 0.85), (0.35, 0.35, 0.35)),
    sky_color=(0.55, 0.7, 0.9),
    light_direction=(-0.4, 0.3, -1.0),
    light_intensity=0.8,
    ambient=0.35,
    edge_softness=0.75,
) -> dict:
    """Render N spheres: centers (N, 3) m, radii (N,) m, colors (N, 3) in [0, 1]; float32 or float64.

    ``light_direction`` is the direction light travels (normalised here); shading is Lambert plus
    ambient on spheres and ground; ``edge_softness`` is the silhouette blur in pixels (0 = hard).
    Lighting, ground and sky parameters may be tensors to receive gradients.
    Returns ``rgb`` (H, W, 3) in [0, 1] and ``alpha`` (H, W) sphere coverage, both differentiable,
    plus ``depth`` (H, W) camera z in m of the first hard hit (inf for sky), ``segmentation``
    (H, W) int32 (0 ground/sky, k+1 sphere k) and ``normal`` (H, W, 3) camera-space unit normal
    (OpenCV axes, 0 for sky), which carry no gradient. The output dtype is that of ``centers``.
    A sphere cut by the ground still composites in front of it in ``rgb``; the hard layers report
    whichever surface the ray meets first.
    """
    centers, radii, colors = _check_spheres(centers, radii, colors)
    device, dtype = centers.device, centers.dtype
    par = lambda x: x.to(device=device, dtype=dtype) if torch.is_tensor(x) else torch.tensor(x, device=device, dtype=dtype)  # noqa: E731
    light = par(light_direction)
    light = light / light.norm()
    intensity, amb = par(light_intensity), par(ambient)

    origins, dirs = (x.reshape(-1, 3) for x in camera.rays(device, dtype))
    background, t_ground, n_ground = _ground(
        origins, dirs, float(ground_height), float(checker_size), par(checker_colors), par(sky_color),
        light, intensity, amb,
    )

    focal = camera.focal()
    soft_px = par(edge_softness)
    if camera.orthographic:
        softness = (soft_px / focal).expand(len(radii))
    else:  # metres per pixel grow with the sphere's camera depth
        rot = camera.rotation(device, dtype)
        depth_c = (centers - par(camera.position)) @ rot[2]
        softness = soft_px * depth_c.clamp(min=1e-6) / focal
    hard_edges = not torch.is_tensor(edge_softness) and float(edge_softness) <= 0.0

    num_pix, num_sph = origins.shape[0], len(radii)
    chunk = max(1, _CHUNK_BYTES // (_VALUES_PER_PAIR * centers.element_size() * max(num_sph, 1)))
    needs_grad = torch.is_grad_enabled() and any(
        torch.is_tensor(x) and x.requires_grad
        for x in (centers, radii, colors, light, intensity, amb, softness, background)
    )
    rgb, alpha, t_first, seg, normal = [], [], [], [], []
    for start in range(0, num_pix, chunk):
        sl = slice(start, start + chunk)
        o, d, bg = origins[sl], dirs[sl], background[sl]
        if num_sph == 0:
            rgb.append(bg)
            alpha.append(bg.new_zeros(bg.shape[0]))
        else:
            args = (o, d, bg, centers, radii, colors, softness, light, intensity, amb, hard_edges)
            out = checkpoint(_composite, *args, use_reentrant=False) if needs_grad else _composite(*args)
            rgb.append(out[0])
            alpha.append(out[1])
        with torch.no_grad():
            hard = _hard_hits(o, d, centers.detach(), radii.detach(), t_ground[sl], n_ground)
        t_first.append(hard[0])
        seg.append(hard[1])
        normal.append(hard[2])

    height, width = camera.height, camera.width
    with torch.no_grad():
        rot = camera.rotation(device, dtype)
        t_first = torch.cat(t_first)
        depth = t_first * (dirs @ rot[2])  # ray origins lie on the camera plane z = 0
        normal_cam = torch.cat(normal) @ rot.T
    return {
        "rgb": torch.cat(rgb).clamp(0.0, 1.0).reshape(height, width, 3),
        "alpha": torch.cat(alpha).clamp(0.0, 1.0).reshape(height, width),
        "depth": depth.reshape(height, width),
        "segmentation": torch.cat(seg).to(torch.int32).reshape(height, width),
        "normal": normal_cam.reshape(height, width, 3),
    }


def render_frames(camera: Camera, centers: torch.Tensor, radii: torch.Tensor, colors: torch.Tensor, **kwargs) -> dict:
    """Render F frames: centers (F, N, 3); radii (N,) or (F, N); colors (N, 3) or (F, N, 3).

    Returns the ``render_spheres`` dict with a leading F axis on every entry.
    """
    if centers.dim() != 3 or centers.shape[0] == 0:
        raise AssetError(f"centers must have shape (F, N, 3) with F >= 1, got {tuple(centers.shape)}", field="centers")
    radii, colors = torch.as_tensor(radii), torch.as_tensor(colors)
    outs = [
        render_spheres(
            camera, centers[f], radii[f] if radii.dim() == 2 else radii, colors[f] if colors.dim() == 3 else colors,
            **kwargs,
        )
        for f in range(centers.shape[0])
    ]
    return {key: torch.stack([o[key] for o in outs]) for key in outs[0]}


def to_uint8(rgb) -> np.ndarray:
    """Float image(s) (..., 3) in [0, 1] (torch or numpy) -> numpy uint8, clamped and rounded."""
    if torch.is_tensor(rgb):
        rgb = rgb.detach().cpu().numpy()
    return np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _check_spheres(centers, radii, colors):
    """Validate shapes; cast radii and colours to the dtype and device of ``centers``."""
    if not torch.is_tensor(centers) or not centers.is_floating_point():
        raise AssetError("centers must be a float32 or float64 torch tensor", field="centers")
    radii = torch.as_tensor(radii).to(device=centers.device, dtype=centers.dtype)
    colors = torch.as_tensor(colors).to(device=centers.device, dtype=centers.dtype)
    n = centers.shape[0] if centers.dim() == 2 else -1
    if centers.dim() != 2 or centers.shape[1] != 3:
        raise AssetError(f"centers must have shape (N, 3), got {tuple(centers.shape)}", field="centers")
    if tuple(radii.shape) != (n,):
        raise AssetError(f"radii must have shape ({n},), got {tuple(radii.shape)}", field="radii")
    if tuple(colors.shape) != (n, 3):
        raise AssetError(f"colors must have shape ({n}, 3), got {tuple(colors.shape)}", field="colors")
    return centers, radii, colors


def _ground(origins, dirs, height, cell, checker, sky, light, intensity, ambient):
    """Background per ray: shaded checker colour (P, 3), ground hit distance (P,) (inf on a miss), normal (3,)."""
    t = (height - origins[:, 2]) / dirs[:, 2]
    hit = (dirs[:, 2] != 0) & (t > 0)
    t = torch.where(hit, t, torch.full_like(t, float("inf")))
    point = origins + torch.where(hit, t, torch.zeros_like(t))[:, None] * dirs
    parity = (torch.floor(point[:, 0] / cell) + torch.floor(point[:, 1] / cell)).remainder(2) > 0.5
    side = 1.0 if float(origins[0, 2]) >= height else -1.0  # the face the camera looks at
    normal = torch.tensor([0.0, 0.0, side], device=origins.device, dtype=origins.dtype)
    shade = ambient + intensity * torch.relu(-(normal @ light))
    colour = torch.where(parity[:, None], checker[1], checker[0]) * shade
    return torch.where(hit[:, None], colour, sky.expand_as(colour)), t, normal


def _composite(o, d, bg, centers, radii, colors, softness, light, intensity, ambient, hard_edges):
    """Soft front-to-back compositing of all spheres for a chunk of P rays -> rgb (P, 3), alpha (P,)."""
    oc = centers[None] - o[:, None]  # (P, N, 3)
    t = (oc * d[:, None]).sum(-1)  # along-ray distance of closest approach
    perp = oc - t[..., None] * d[:, None]  # closest point on the ray -> centre
    d2 = (perp * perp).sum(-1)
    r = radii[None]
    # half chord, clamped so that normals at and beyond the silhouette stay finite
    h = torch.sqrt(torch.maximum(r * r - d2, (1e-3 * r) ** 2))
    nvec = -perp - h[..., None] * d[:, None]  # hit point - centre; silhouette normal where d >= r
    n = nvec / torch.sqrt(d2 + h * h)[..., None]
    shaded = colors[None] * (ambient + intensity * torch.relu(-(n @ light)))[..., None]
    if hard_edges:
        alpha = (d2 < r * r).to(d2.dtype)
    else:
        dist = torch.sqrt(d2.clamp(min=1e-20))
        alpha = torch.sigmoid((r - dist) / softness[None])
    key = (t - h).detach()
    alpha = alpha * (key > 0)  # spheres behind the ray origin are invisible
    order = torch.argsort(key, dim=1)
    a = torch.gather(alpha, 1, order)
    c = torch.gather(shaded, 1, order[..., None].expand_as(shaded))
    trans = torch.cumprod(1.0 - a, dim=1)
    before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
    rgb = ((before * a)[..., None] * c).sum(1) + trans[:, -1:] * bg
    return rgb, 1.0 - trans[:, -1]


def _hard_hits(o, d, centers, radii, t_ground, n_ground):
    """Exact first hit per ray: distance (P,) (inf = sky), segmentation (P,), world normal (P, 3)."""
    t_sph = torch.full_like(t_ground, float("inf"))
    idx = torch.zeros(len(t_ground), dtype=torch.long, device=o.device)
    if len(radii):
        oc = centers[None] - o[:, None]
        t = (oc * d[:, None]).sum(-1)
        perp = oc - t[..., None] * d[:, None]
        gap = radii[None] ** 2 - (perp * perp).sum(-1)
        t_hit = t - torch.sqrt(gap.clamp(min=0.0))
        t_hit = torch.where((gap > 0) & (t_hit > 0), t_hit, torch.full_like(t_hit, float("inf")))
        t_sph, idx = t_hit.min(dim=1)
    on_sphere = t_sph < t_ground
    t_first = torch.minimum(t_sph, t_ground)
    seg = torch.where(on_sphere, idx + 1, torch.zeros_like(idx))
    normal = torch.zeros_like(o)
    normal[torch.isfinite(t_ground) & ~on_sphere] = n_ground
    if on_sphere.any():
        k = idx[on_sphere]
        point = o[on_sphere] + t_sph[on_sphere, None] * d[on_sphere]
        normal[on_sphere] = torch.nn.functional.normalize(point - centers[k], dim=-1)
    return t_first, seg, normal
