"""Differentiable analytic ray tracing of spheres over a checkered ground plane (z-up world).

Every pixel ray is tested against every sphere in closed form (no mesh). Sphere edges are soft
(sigmoid of the signed distance to the silhouette), spheres are alpha-composited front to back per
pixel, and the ground (or sky) sits behind all of them, so gradients of any pixel loss reach sphere
centres, radii, colours and the lighting parameters. Hard layers (depth, segmentation, normals)
come from exact ray hits and carry no gradient.
"""

from __future__ import annotations

import math

from typing import Sequence

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from hybridsim.errors import AssetError
from hybridsim.render.camera import Camera
from hybridsim.render.textures import Texture

__all__ = ["render_spheres", "render_frames", "to_uint8"]

_CHUNK_BYTES = 64 * 2**20  # budget for the pixels x spheres intermediates of one chunk
_VALUES_PER_PAIR = 48  # tensors of size (pixels, spheres) alive in one chunk, forward and backward
_TILE = 16  # pixels per side of the culling tiles
_CULL_SIGMAS = 20.0  # skip a sphere where its coverage sigmoid((r - d) / s) < sigmoid(-20) ~ 2e-9


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
    albedo: bool = False,
    light_type: str = "directional",
    light_position=None,
    cone_deg=30.0,
    falloff=0.2,
    textures: Sequence[Texture | None] | None = None,
) -> dict:
    """Render N spheres: centers (N, 3) m, radii (N,) m, colors (N, 3) in [0, 1]; float32 or float64.

    ``light_direction`` is the direction light travels (normalised here); shading is Lambert plus
    ambient on spheres and ground; ``edge_softness`` is the silhouette blur in pixels (0 = hard).
    Lighting, ground and sky parameters may be tensors to receive gradients.
    ``light_type = "spot"``: a point light at ``light_position`` (3,) [m] shining along
    ``light_direction`` within a cone of half angle ``cone_deg`` [deg], fading to zero over the
    outer ``falloff`` fraction of that angle; spheres and ground are shaded per point with the
    mesh renderer's formula (Lambert towards the light times the smooth cone edge, no distance
    attenuation); position, cone and falloff may be tensors (differentiable).
    ``textures``: optional per-sphere ``hybridsim.render.textures.Texture`` or None (N entries),
    evaluated at each surface point in the sphere's frame (point - centre; spheres do not
    rotate), filtered by the pixel footprint on the sphere and multiplied by the sphere's colour:
    the texture moves with the sphere; ``rgb`` / ``albedo`` stay differentiable w.r.t. centres,
    radii, colours and light (not w.r.t. the texture itself).
    Returns ``rgb`` (H, W, 3) in [0, 1] and ``alpha`` (H, W) sphere coverage, both differentiable,
    plus ``depth`` (H, W) camera z in m of the first hard hit (inf for sky), ``segmentation``
    (H, W) int32 (0 ground/sky, k+1 sphere k) and ``normal`` (H, W, 3) camera-space unit normal
    (OpenCV axes, 0 for sky), which carry no gradient. The output dtype is that of ``centers``.
    A sphere cut by the ground still composites in front of it in ``rgb``; the hard layers report
    whichever surface the ray meets first. With ``albedo`` also ``albedo`` (H, W, 3): the unlit
    colours (spheres, checker ground, sky) composited the same way, differentiable.
    """
    centers, radii, colors = _check_spheres(centers, radii, colors)
    device, dtype = centers.device, centers.dtype
    par = lambda x: x.to(device=device, dtype=dtype) if torch.is_tensor(x) else torch.tensor(x, device=device, dtype=dtype)  # noqa: E731
    light = par(light_direction)
    light = light / light.norm()
    intensity, amb = par(light_intensity), par(ambient)
    from hybridsim.render.mesh import _spot_light  # mesh imports this module: import here

    spot = _spot_light(light_type, light_position, cone_deg, falloff, par)
    # packed spot light: position (3), cos of the outer and inner cone angles; empty = directional
    spot = torch.cat([spot[0], spot[1].reshape(1), spot[2].reshape(1)]) if spot is not None \
        else centers.new_zeros(0)

    origins, dirs = (x.reshape(-1, 3) for x in camera.rays(device, dtype))
    background, t_ground, n_ground = _ground(
        origins, dirs, float(ground_height), float(checker_size), par(checker_colors), par(sky_color),
        light, intensity, amb, 1.0 / camera.focal(), camera.orthographic, spot,
    )
    rot = camera.rotation(device, dtype)
    soft_px = par(edge_softness)
    if camera.orthographic:
        softness = (soft_px / camera.focal()).expand(len(radii))
    else:  # metres per pixel grow with the sphere's camera depth
        depth_c = (centers - par(camera.position)) @ rot[2]
        softness = soft_px * depth_c.clamp(min=1e-6) / camera.focal()
    hard_edges = not torch.is_tensor(edge_softness) and float(edge_softness) <= 0.0

    budget = _CHUNK_BYTES // (_VALUES_PER_PAIR * centers.element_size())
    plan = _plan_chunks(camera, centers.detach(), radii.detach() + _CULL_SIGMAS * softness.detach(), budget)
    textured = None
    if textures is not None:
        if len(textures) != len(radii):
            raise AssetError(f"got {len(textures)} textures for {len(radii)} spheres", field="textures")
        if any(t is not None for t in textures):
            textured = _SphereTextures(list(textures), rot, camera.focal(), camera.orthographic)
    rgb, alpha = _SoftSpheres.apply(
        plan, hard_edges, textured, origins, dirs, background, centers, radii, colors, softness, light, intensity, amb,
        spot
    )
    unlit = None
    if albedo:  # the same composite with light off and ambient 1: the unlit colours
        off, full = intensity * 0.0, amb * 0.0 + 1.0
        ground_albedo = _ground(origins, dirs, float(ground_height), float(checker_size), par(checker_colors),
                                par(sky_color), light, off, full, 1.0 / camera.focal(), camera.orthographic,
                                spot)[0]
        unlit, _ = _SoftSpheres.apply(plan, hard_edges, textured, origins, dirs, ground_albedo, centers, radii, colors,
                                      softness, light, off, full, spot)
    with torch.no_grad():
        t_first, seg, normal = t_ground.clone(), torch.zeros_like(t_ground, dtype=torch.int32), torch.zeros_like(dirs)
        normal[torch.isfinite(t_ground)] = n_ground
        for pix, idx in plan:
            hits = _hard_hits(origins[pix], dirs[pix], centers[idx].detach(), radii[idx].detach(), idx,
                              t_first[pix], seg[pix], normal[pix])
            t_first[pix], seg[pix], normal[pix] = hits
        depth = t_first * (dirs @ rot[2])  # ray origins lie on the camera plane z = 0
        normal = normal @ rot.T
    height, width = camera.height, camera.width
    out = {
        "rgb": rgb.clamp(0.0, 1.0).reshape(height, width, 3),
        "alpha": alpha.clamp(0.0, 1.0).reshape(height, width),
        "depth": depth.reshape(height, width),
        "segmentation": seg.reshape(height, width),
        "normal": normal.reshape(height, width, 3),
    }
    if unlit is not None:
        out["albedo"] = unlit.clamp(0.0, 1.0).reshape(height, width, 3)
    return out


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


def _ground(origins, dirs, height, cell, checker, sky, light, intensity, ambient, pixel_scale, orthographic,
            spot=None):
    """Background per ray: shaded checker colour (P, 3), ground hit distance (P,) (inf on a miss), normal (3,).
    ``spot``: packed spot light (see ``render_spheres``), shading each ground point; None or empty:
    the directional ``light``.

    The checker is box-filtered over each pixel's footprint on the ground (``pixel_scale`` is
    metres per pixel at unit depth, or per pixel for orthographic), so far-away squares fade to
    their mean colour instead of aliasing into noise.
    """
    t = (height - origins[:, 2]) / dirs[:, 2]
    hit = (dirs[:, 2] != 0) & (t > 0)
    t = torch.where(hit, t, torch.full_like(t, float("inf")))
    t_safe = torch.where(hit, t, torch.zeros_like(t))
    point = origins + t_safe[:, None] * dirs
    # footprint in checker units: grows with distance and with grazing incidence
    reach = pixel_scale if orthographic else pixel_scale * t_safe
    width = (reach / dirs[:, 2].abs().clamp(min=1e-3) / cell).clamp(min=1e-4)[:, None]
    p = point[:, :2] / cell
    tri = lambda x: (torch.remainder(x * 0.5, 1.0) - 0.5).abs()  # noqa: E731  integral of the square wave
    mean_wave = 2.0 * (tri(p - 0.5 * width) - tri(p + 0.5 * width)) / width  # box-filtered +-1 wave
    odd = 0.5 - 0.5 * mean_wave[:, 0] * mean_wave[:, 1]  # fraction of the footprint on odd squares
    side = 1.0 if float(origins[0, 2]) >= height else -1.0  # the face the camera looks at
    normal = torch.tensor([0.0, 0.0, side], device=origins.device, dtype=origins.dtype)
    if spot is not None and spot.numel():
        from hybridsim.render.mesh import _spot_direct

        shade = ambient + intensity * _spot_direct(point, normal, light, spot[:3], spot[3], spot[4])[:, None]
    else:
        shade = ambient + intensity * torch.relu(-(normal @ light))
    colour = (checker[0] + (checker[1] - checker[0]) * odd[:, None]) * shade
    return torch.where(hit[:, None], colour, sky.expand_as(colour)), t, normal


class _SoftSpheres(torch.autograd.Function):
    """Chunked soft compositing; backward recomputes each chunk so memory stays per chunk."""

    @staticmethod
    def forward(ctx, plan, hard_edges, textured, o, d, bg, centers, radii, colors, softness, light, intensity, ambient,
                spot):
        rgb, alpha = bg.clone(), bg.new_zeros(bg.shape[0])
        for pix, idx in plan:
            sph = (x[idx] for x in (centers, radii, colors, softness))
            rgb[pix], alpha[pix] = _composite(o[pix], d[pix], bg[pix], *sph, light, intensity, ambient, spot,
                                              hard_edges, textured and textured.subset(idx))
        ctx.plan, ctx.hard_edges, ctx.textured = plan, hard_edges, textured
        ctx.save_for_backward(o, d, bg, centers, radii, colors, softness, light, intensity, ambient, spot)
        return rgb, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, g_rgb, g_alpha):
        inputs, need = ctx.saved_tensors, ctx.needs_input_grad[3:]
        grads = [torch.zeros_like(x) if n else None for x, n in zip(inputs, need)]
        if need[2]:
            grads[2] = g_rgb.clone()  # pixels without spheres show the background unchanged
        shared = [x.detach().requires_grad_(n) for x, n in zip(inputs[3:], need[3:])]
        for pix, idx in ctx.plan:
            with torch.enable_grad():
                pixel = [x[pix].detach().requires_grad_(n) for x, n in zip(inputs[:3], need[:3])]
                sph = [x[idx] for x in shared[:4]]
                out = _composite(*pixel, *sph, *shared[4:], ctx.hard_edges,
                                 ctx.textured and ctx.textured.subset(idx))
            leaves = pixel + shared
            wanted = [i for i, n in enumerate(need) if n]
            live = [(y, g) for y, g in zip(out, (g_rgb[pix], g_alpha[pix])) if y.requires_grad]
            if not live:  # e.g. hard edges: alpha has no gradient, rgb none w.r.t. the wanted inputs
                continue
            ys, gs = zip(*live)
            got = torch.autograd.grad(ys, [leaves[i] for i in wanted], gs, allow_unused=True)
            for i, g in zip(wanted, got):
                if i < 3:
                    grads[i][pix] = 0.0 if g is None else g
                elif g is not None:
                    grads[i] += g
        return (None, None, None, *grads)


def _plan_chunks(camera: Camera, centers, reach, budget_pairs: int):
    """Group pixels into chunks, each with the spheres whose soft reach can touch it.

    ``reach`` (N,) is the radius (m) beyond which a sphere's coverage is negligible. Works on
    square tiles of the image, merging neighbours along a tile row while pixels x spheres stays
    within ``budget_pairs``; a tile over budget is split. Returns [(pixel indices, sphere indices)].
    """
    height, width = camera.height, camera.width
    if len(reach) == 0:
        return []
    left, right, top, bottom = _screen_boxes(camera, centers.double(), reach.double())
    pixels = torch.arange(height * width, device=centers.device).reshape(height, width)
    plan = []

    def flush(group, mask):
        if group and mask.any():
            plan.append((torch.cat(group), mask.nonzero()[:, 0]))

    for r0 in range(0, height, _TILE):
        in_rows = (top <= r0 + _TILE + 0.5) & (bottom >= r0 - 0.5)  # pixel centres at i + 0.5, 1 px slack
        group, union = [], torch.zeros_like(in_rows)
        for c0 in range(0, width, _TILE):
            mask = in_rows & (left <= c0 + _TILE + 0.5) & (right >= c0 - 0.5)
            tile = pixels[r0:r0 + _TILE, c0:c0 + _TILE].reshape(-1)
            grown = union | mask
            if (sum(len(g) for g in group) + len(tile)) * int(grown.sum()) <= budget_pairs:
                group.append(tile)
                union = grown
                continue
            flush(group, union)
            count = int(mask.sum())
            if len(tile) * count <= budget_pairs:
                group, union = [tile], mask
            else:  # one tile is already over budget: split its pixels
                step = max(1, budget_pairs // count)
                plan += [(tile[i:i + step], mask.nonzero()[:, 0]) for i in range(0, len(tile), step)]
                group, union = [], torch.zeros_like(mask)
        flush(group, union)
    return plan


def _screen_boxes(camera: Camera, centers, reach):
    """Conservative pixel bounding boxes (left, right, top, bottom), each (N,), of spheres of radius ``reach``."""
    cam = camera.to_camera(centers)
    f = camera.focal()
    x, y, z = cam.unbind(-1)
    if camera.orthographic:
        x, y = x * f + camera.cx, y * f + camera.cy
        return x - reach * f, x + reach * f, y - reach * f, y + reach * f
    denom = z * z - reach * reach
    ok = (z > reach) & (denom > 1e-12)  # wholly in front of the camera plane
    safe = torch.where(ok, denom, torch.ones_like(denom))
    inf = torch.full_like(z, float("inf"))
    out = []
    for u, c in ((x, camera.cx), (y, camera.cy)):
        # tangent planes through the eye: u/z extent of the sphere's silhouette
        root = reach * torch.sqrt((u * u + denom).clamp(min=0.0))
        out += [torch.where(ok, (u * z - root) / safe * f + c, -inf), torch.where(ok, (u * z + root) / safe * f + c, inf)]
    behind = z + reach <= 0  # wholly behind the camera: never visible
    out[0] = torch.where(behind, inf, out[0])
    return tuple(out)


class _SphereTextures:
    """Per-sphere textures plus what their pixel footprints need: the camera rotation (3, 3),
    focal length [px] and projection."""

    def __init__(self, textures, rot, focal, orthographic):
        self.textures, self.rot, self.focal, self.orthographic = textures, rot, focal, orthographic

    def subset(self, idx) -> "_SphereTextures | None":
        chosen = [self.textures[i] for i in idx.tolist()]
        return _SphereTextures(chosen, self.rot, self.focal, self.orthographic) if any(chosen) else None

    def albedo(self, o, d, colors, offset, n, hit_t):
        """Albedo (P, N, 3) of the surface points ``centre + offset`` (offset (P, N, 3) = radius *
        unit normal ``n``) hit at ray distance ``hit_t`` (P, N)."""
        nd = (n * d[:, None]).sum(-1, keepdim=True).clamp(max=-1e-3)  # front hits face the ray

        def step(axis):  # surface-point motion for one pixel along camera ``axis`` (right or down)
            if self.orthographic:  # the ray origin moves 1 / focal [m]; the point slides on the tangent plane
                move = (axis / self.focal).expand_as(d)[:, None]
                return move - d[:, None] * ((n * move).sum(-1, keepdim=True) / nd)
            # the unit direction turns by ``move``; the point slides on the tangent plane
            move = ((d @ self.rot[2])[:, None] * (axis - d * (d @ axis)[:, None]) / self.focal)[:, None]
            return hit_t[..., None] * (move - d[:, None] * ((n * move).sum(-1, keepdim=True) / nd))

        d_dx, d_dy = step(self.rot[0]), step(self.rot[1])
        columns = []
        for j, texture in enumerate(self.textures):
            base = colors[j].expand(o.shape[0], 3)
            if texture is not None:
                base = base * texture.evaluate(offset[:, j], d_dx[:, j], d_dy[:, j], n[:, j])
            columns.append(base)
        return torch.stack(columns, dim=1)


def _composite(o, d, bg, centers, radii, colors, softness, light, intensity, ambient, spot, hard_edges,
               textured=None):
    """Soft front-to-back compositing of all spheres for a chunk of P rays -> rgb (P, 3), alpha (P,).
    ``spot``: packed spot light (position, cos outer, cos inner) or empty for the directional ``light``;
    ``textured``: the chunk's ``_SphereTextures`` or None."""
    oc = centers[None] - o[:, None]  # (P, N, 3)
    t = (oc * d[:, None]).sum(-1)  # along-ray distance of closest approach
    perp = oc - t[..., None] * d[:, None]  # closest point on the ray -> centre
    d2 = (perp * perp).sum(-1)
    r = radii[None]
    # half chord, clamped so that normals at and beyond the silhouette stay finite
    h = torch.sqrt(torch.maximum(r * r - d2, (1e-3 * r) ** 2))
    nvec = -perp - h[..., None] * d[:, None]  # hit point - centre; silhouette normal where d >= r
    n = nvec / torch.sqrt(d2 + h * h)[..., None]
    if spot.numel():  # the point of the sphere that faces the pixel (on the silhouette at and beyond it)
        from hybridsim.render.mesh import _spot_direct

        direct = _spot_direct(centers[None] + r[..., None] * n, n, light, spot[:3], spot[3], spot[4])
    else:
        direct = torch.relu(-(n @ light))
    albedo = colors[None] if textured is None else textured.albedo(o, d, colors, r[..., None] * n, n, t - h)
    shaded = albedo * (ambient + intensity * direct)[..., None]
    if hard_edges:
        alpha = (d2 < r * r).to(d2.dtype)
    else:
        dist = torch.sqrt(d2.clamp(min=1e-20))
        # A logistic edge of scale s around radius R covers pi (R^2 + pi^2 s^2 / 3): for a ball 5 px
        # across with s = 0.75 px that is 7% more than the ball. The edge sits at the radius that
        # keeps the covered area the ball's, so a fit to a silhouette another renderer drew with
        # hard or supersampled edges sees the true size (depth) of the ball.
        var = (math.pi ** 2 / 3.0) * softness[None] ** 2
        edge = torch.sqrt(torch.clamp(r * r - var, min=0.25 * r * r))
        alpha = torch.sigmoid((edge - dist) / softness[None])
    key = (t - h).detach()
    alpha = alpha * (key > 0)  # spheres behind the ray origin are invisible
    order = torch.argsort(key, dim=1)
    a = torch.gather(alpha, 1, order)
    c = torch.gather(shaded, 1, order[..., None].expand_as(shaded))
    trans = torch.cumprod(1.0 - a, dim=1)
    before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
    rgb = ((before * a)[..., None] * c).sum(1) + trans[:, -1:] * bg
    return rgb, 1.0 - trans[:, -1]


def _hard_hits(o, d, centers, radii, idx, t_first, seg, normal):
    """Exact first sphere hit per ray where it beats the ground distance in ``t_first``.

    o, d (P, 3); centers (M, 3), radii (M,) with global sphere indices ``idx`` (M,); t_first (P,)
    is the ground distance (inf = sky), seg (P,) int32, normal (P, 3) world. Returns updated copies.
    """
    oc = centers[None] - o[:, None]
    t = (oc * d[:, None]).sum(-1)
    perp = oc - t[..., None] * d[:, None]
    gap = radii[None] ** 2 - (perp * perp).sum(-1)
    t_hit = t - torch.sqrt(gap.clamp(min=0.0))
    t_hit = torch.where((gap > 0) & (t_hit > 0), t_hit, torch.full_like(t_hit, float("inf")))
    t_sph, k = t_hit.min(dim=1)
    won = t_sph < t_first
    sphere_normal = torch.nn.functional.normalize(o + t_sph.nan_to_num(posinf=0.0)[:, None] * d - centers[k], dim=-1)
    return (
        torch.where(won, t_sph, t_first),
        torch.where(won, (idx[k] + 1).to(seg.dtype), seg),
        torch.where(won[:, None], sphere_normal, normal),
    )
