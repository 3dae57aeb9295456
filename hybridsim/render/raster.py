"""Tiled soft rasterisation of triangles: screen-tile binning, the per-chunk compositing kernel and
its adjoint, and the binned ground-shadow test.

A triangle covers a pixel with ``sigmoid(sd / sigma)``, ``sd`` being the signed distance in pixels
from the pixel centre to the triangle's silhouette edges (positive inside). Edges shared with a
neighbour that is drawn with the same facing are *interior*: they are hard (a step), so the faces
of a smooth or flat surface tile it without seams and only true silhouettes are blurred. Coverage
is exactly zero beyond ``CULL_SIGMAS * sigma`` pixels from the triangle, which is what makes tile
binning exact. Per pixel, covering triangles are alpha-composited front to back in the order of
their (detached) depth at that pixel, over a background.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["TILE", "CULL_SIGMAS", "plan_tiles", "dense_plan", "soft_rasterize", "composite_faces", "ground_shadow", "screen_tiles",
           "chunk_budget"]

TILE = 16  # pixels per side of a screen tile
CULL_SIGMAS = 20.0  # coverage is cut to 0 beyond 20 sigma (sigmoid(-20) ~ 2e-9)
_CHUNK_BYTES = 64 * 2**20  # budget for the pixels x faces intermediates of one chunk
_VALUES_PER_PAIR = 80  # tensors of size (pixels, faces) alive in one chunk, forward and backward


def chunk_budget(element_size: int) -> int:
    """Largest pixels x faces product of one chunk for the given float size in bytes."""
    return _CHUNK_BYTES // (_VALUES_PER_PAIR * element_size)


def plan_tiles(height: int, width: int, boxes: torch.Tensor, face_ids: torch.Tensor, budget_pairs: int):
    """Bin faces to 16x16 screen tiles by their pixel bounding boxes.

    ``boxes`` (F, 4) is (left, right, top, bottom) in pixels, already grown by the blur reach, for
    the faces ``face_ids`` (F,). Returns [(pixel indices (P,), face indices (M,))]; a tile whose
    pixels x faces exceeds ``budget_pairs`` is split into pixel runs. Tiles that no face reaches
    are left out (they show the background).
    """
    device = boxes.device
    cols, rows = -(-width // TILE), -(-height // TILE)
    if len(face_ids) == 0:
        return []
    boxes = boxes.double()
    # pixel centres of tile c lie in [16 c + 0.5, 16 c + 15.5]
    c_lo = torch.ceil((boxes[:, 0] - (TILE - 0.5)) / TILE).clamp(0, cols - 1)
    c_hi = torch.floor((boxes[:, 1] - 0.5) / TILE).clamp(-1, cols - 1)
    r_lo = torch.ceil((boxes[:, 2] - (TILE - 0.5)) / TILE).clamp(0, rows - 1)
    r_hi = torch.floor((boxes[:, 3] - 0.5) / TILE).clamp(-1, rows - 1)
    ok = (c_lo <= c_hi) & (r_lo <= r_hi) & (boxes[:, 1] >= boxes[:, 0])
    c_lo, c_hi, r_lo, r_hi, face_ids = (x[ok].long() if x.is_floating_point() else x[ok]
                                        for x in (c_lo, c_hi, r_lo, r_hi, face_ids))
    ncol, nrow = c_hi - c_lo + 1, r_hi - r_lo + 1
    count = ncol * nrow
    if count.sum() == 0:
        return []
    # one (tile, face) pair per tile a face's box overlaps
    owner = torch.repeat_interleave(torch.arange(len(face_ids), device=device), count)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(int(count.sum()), device=device) - start[owner]
    tile = (r_lo[owner] + local // ncol[owner]) * cols + c_lo[owner] + local % ncol[owner]
    order = torch.argsort(tile, stable=True)
    tile, pair_face = tile[order], face_ids[owner[order]]
    tiles, per_tile = torch.unique_consecutive(tile, return_counts=True)
    pixels = torch.arange(height * width, device=device).reshape(height, width)
    plan = []
    for t, faces in zip(tiles.tolist(), torch.split(pair_face, per_tile.tolist())):
        r0, c0 = (t // cols) * TILE, (t % cols) * TILE
        pix = pixels[r0:r0 + TILE, c0:c0 + TILE].reshape(-1)
        step = max(1, budget_pairs // len(faces))
        plan += [(pix[i:i + step], faces) for i in range(0, len(pix), step)]
    return plan


def dense_plan(height: int, width: int, face_ids: torch.Tensor):
    """The brute-force plan: every pixel against every face, in one chunk (for tests and benchmarks)."""
    return [(torch.arange(height * width, device=face_ids.device), face_ids)] if len(face_ids) else []


def _edge_terms(xy, tri, with_distances=True):
    """Per (pixel, face): edge functions (3, P, F) (>= 0 inside, scaled by the face's |2 area|),
    line distances (3, P, F) [px], squared distances to the edge segments (3, P, F) [px^2], and
    the signed doubled screen areas (F,). Edge k runs from vertex k+1 to vertex k+2."""
    start = tri[:, [1, 2, 0]].permute(1, 0, 2)  # (3, F, 2)
    edge = tri[:, [2, 0, 1]].permute(1, 0, 2) - start
    area = edge[2, :, 0] * (-edge[1, :, 1]) - edge[2, :, 1] * (-edge[1, :, 0])  # (p1 - p0) x (p2 - p0)
    sign = torch.sign(area).detach()
    ex, ey = edge[..., 0, None], edge[..., 1, None]  # (3, F, 1)
    qx = xy[None, None, :, 0] - start[..., 0, None]  # (3, F, P)
    qy = xy[None, None, :, 1] - start[..., 1, None]
    func = sign[None, :, None] * (ex * qy - ey * qx)
    if not with_distances:
        return func.transpose(1, 2), None, None, area
    len2 = ex * ex + ey * ey
    line = func / torch.sqrt(len2)
    t = ((qx * ex + qy * ey) / len2).clamp(0.0, 1.0)
    rx, ry = qx - t * ex, qy - t * ey
    seg = rx * rx + ry * ry
    return func.transpose(1, 2), line.transpose(1, 2), seg.transpose(1, 2), area


def composite_faces(xy, tri, key_data, z_range, interior, feat, bg, sigma, orthographic):
    """Soft front-to-back compositing of F faces over P pixels.

    xy (P, 2) pixel centres; tri (F, 3, 2) screen vertices [px]; key_data (F, 3) per-vertex 1/z
    (perspective) or z (orthographic); z_range (F, 2) min / max vertex depth; interior (F, 3) int8
    per edge (edge k is opposite vertex k): 0 silhouette (soft), 1 interior and owning pixel centres
    exactly on it, 2 interior and not owning them; feat (F, C) per-face values; bg (P, C); sigma [px].
    Returns composited values (P, C), alpha (P,), and the exact hard hit depth (P,) (inf = none)
    with the local index of the hit face (P,) (-1 = none).
    """
    func, line, seg, area = _edge_terms(xy, tri)
    inside = (func >= 0).all(0)
    kind = interior.T[:, None, :]  # (3, 1, F)
    # a pixel centre exactly on an interior edge belongs to the face with the smaller index only
    step = ((kind == 0) | (func > 0) | ((func == 0) & (kind == 1))).all(0)
    big = 40.0 * sigma
    sd_in = torch.where(kind > 0, big, line).amin(0).clamp(max=big)
    sd_out = -torch.sqrt(seg.amin(0).clamp(min=1e-30))
    sd = torch.where(inside, sd_in, sd_out)
    cover = torch.sigmoid(sd / sigma) * (step & (sd > -CULL_SIGMAS * sigma))
    with torch.no_grad():  # depth of each face's plane at the pixel: ordering only
        bary = func / (area.abs()[None, None, :])
        value = (bary * key_data.T[:, None, :]).sum(0)
        if orthographic:
            z = value
        else:
            z = torch.where(value > 0, 1.0 / value, torch.full_like(value, float("inf")))
        key = torch.minimum(torch.maximum(z, z_range[None, :, 0]), z_range[None, :, 1])
        hard = torch.where(inside, z, torch.full_like(z, float("inf")))
        hard_z, hard_face = hard.min(1) if hard.shape[1] else (hard.new_full((hard.shape[0],), float("inf")),
                                                               torch.zeros(hard.shape[0], dtype=torch.long))
        hard_face = torch.where(torch.isfinite(hard_z), hard_face, torch.full_like(hard_face, -1))
    order = torch.argsort(key, dim=1)
    a = torch.gather(cover, 1, order)
    trans = torch.cumprod(1.0 - a, dim=1)
    before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
    weight = torch.zeros_like(cover).scatter(1, order, before * a)  # back to face order
    out = weight @ feat + trans[:, -1:] * bg
    return out, 1.0 - trans[:, -1], hard_z, hard_face


class _SoftRaster(torch.autograd.Function):
    """Chunked soft rasterisation; backward recomputes each chunk so memory stays per chunk."""

    @staticmethod
    def forward(ctx, plan, fixed, tri, feat, bg, sigma):
        xy, key_data, z_range, interior, orthographic = fixed
        out, alpha = bg.clone(), bg.new_zeros(bg.shape[0])
        hard_z = bg.new_full((bg.shape[0],), float("inf"))
        hard_face = torch.full((bg.shape[0],), -1, dtype=torch.long, device=bg.device)
        for pix, faces in plan:
            o, a, hz, hf = composite_faces(xy[pix], tri[faces], key_data[faces], z_range[faces], interior[faces],
                                           feat[faces], bg[pix], sigma, orthographic)
            out[pix], alpha[pix], hard_z[pix] = o, a, hz
            hard_face[pix] = torch.where(hf >= 0, faces[hf.clamp(min=0)], hf)
        ctx.plan, ctx.fixed = plan, fixed
        ctx.save_for_backward(tri, feat, bg, sigma)
        ctx.mark_non_differentiable(hard_z, hard_face)
        return out, alpha, hard_z, hard_face

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_alpha, _g_z, _g_face):
        tri, feat, bg, sigma = ctx.saved_tensors
        xy, key_data, z_range, interior, orthographic = ctx.fixed
        need = ctx.needs_input_grad[2:]
        grads = [torch.zeros_like(x) if n else None for x, n in zip((tri, feat, bg, sigma), need)]
        if need[2]:
            grads[2] = g_out.clone()  # pixels no face reaches show the background unchanged
        for pix, faces in ctx.plan:
            with torch.enable_grad():
                leaves = [tri[faces].detach().requires_grad_(need[0]), feat[faces].detach().requires_grad_(need[1]),
                          bg[pix].detach().requires_grad_(need[2]), sigma.detach().requires_grad_(need[3])]
                o, a, _, _ = composite_faces(xy[pix], leaves[0], key_data[faces], z_range[faces], interior[faces],
                                             leaves[1], leaves[2], leaves[3], orthographic)
            wanted = [i for i, n in enumerate(need) if n]
            live = [(y, g) for y, g in ((o, g_out[pix]), (a, g_alpha[pix])) if y.requires_grad]
            if not live or not wanted:
                continue
            ys, gs = zip(*live)
            got = torch.autograd.grad(ys, [leaves[i] for i in wanted], gs, allow_unused=True)
            for i, g in zip(wanted, got):
                if g is None:
                    if i == 2:
                        grads[2][pix] = 0.0
                    continue
                if i in (0, 1):
                    grads[i].index_add_(0, faces, g)
                elif i == 2:
                    grads[2][pix] = g
                else:
                    grads[3] += g
        return (None, None, *grads)


def soft_rasterize(plan, xy, tri, key_data, z_range, interior, feat, bg, sigma, orthographic):
    """Run the chunked rasteriser over ``plan``; see ``composite_faces`` for the arguments.

    Returns (values (P, C), alpha (P,), hard depth (P,), hard face index (P,) global, -1 = none);
    values and alpha are differentiable in ``tri``, ``feat``, ``bg`` and ``sigma``.
    """
    fixed = (xy, key_data.detach(), z_range.detach(), interior, orthographic)
    return _SoftRaster.apply(plan, fixed, tri, feat, bg, sigma)


def screen_tiles(height: int, width: int, device=None) -> list[torch.Tensor]:
    """Pixel indices (row-major) of each 16x16 screen tile."""
    pixels = torch.arange(height * width, device=device).reshape(height, width)
    return [pixels[r:r + TILE, c:c + TILE].reshape(-1) for r in range(0, height, TILE) for c in range(0, width, TILE)]


def ground_shadow(points, lit, triangles, light, height, tiles):
    """Hard shadow test of ground points against triangles, binned by screen tiles.

    points (P, 3) ground points [m], lit (P,) bool (which points to test), triangles (T, 3, 3)
    world [m], light (3,) unit direction the light travels (pointing down), ``tiles`` a list of
    pixel-index tensors. Each triangle is projected along the light onto the ground plane
    z = ``height``; a point is shadowed if it lies inside a projected triangle. Each tile tests only
    the projected triangles whose boxes overlap its points' box. Returns shadowed (P,) bool.
    Not differentiable.
    """
    shadow = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    if len(triangles) == 0 or float(light[2]) >= 0.0:
        return shadow
    with torch.no_grad():
        tris = triangles[(triangles[..., 2] > height + 1e-9).any(1)]
        drop = ((tris[..., 2] - height).clamp(min=0.0) / -light[2])[..., None]
        flat = (tris + drop * light)[..., :2]  # (T, 3, 2) on the ground plane
        lo, hi = flat.amin(1), flat.amax(1)
        for pix in tiles:
            sel = pix[lit[pix]]
            if len(sel) == 0:
                continue
            q = points[sel, :2]
            near = ((hi >= q.amin(0)) & (lo <= q.amax(0))).all(1).nonzero()[:, 0]
            if len(near) == 0:
                continue
            func, _, _, area = _edge_terms(q, flat[near], with_distances=False)
            shadow[sel] = ((func >= 0).all(0) & (area.abs() > 1e-18)[None]).any(1)
    return shadow
