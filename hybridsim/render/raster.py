"""Tiled soft rasterisation of triangles: screen-tile binning, the per-chunk compositing kernel and
its adjoint, and the binned ground-shadow test.

A triangle covers a pixel with ``sigmoid(sd / sigma)``, ``sd`` being the signed distance in pixels
from the pixel centre to the triangle's silhouette edges (positive inside). Edges shared with a
neighbour that is drawn with the same facing are *interior*: they are hard (a step), so the faces
of a smooth or flat surface tile it without seams and only true silhouettes are blurred. Coverage
is exactly zero beyond ``CULL_SIGMAS * sigma`` pixels from the triangle, which is what makes tile
binning exact. Per pixel, covering triangles are alpha-composited front to back in the order of
their (detached) depth at that pixel, over a background.

The composited values are per-face features, or per pixel-face pair when a ``PairShader`` is given:
for every pair where the face covers the pixel it receives per-vertex attributes interpolated
perspective-correctly at the pixel centre (extrapolated linearly in screen space beyond a face's
edges, where its blurred silhouette still covers pixels), with their screen derivatives (d/dx,
d/dy per pixel, for texture filtering), and returns the pair's values; everything stays
differentiable w.r.t. the screen vertices, their depths, the attributes, the face features and
the shader's parameters.

``shadow_rays`` is the hard (not differentiable) shadow test of arbitrary surface points against
triangles along a directional light or towards a point (spot) light, binned like ``ground_shadow``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["TILE", "CULL_SIGMAS", "PairShader", "plan_tiles", "dense_plan", "soft_rasterize", "composite_faces",
           "ground_shadow", "shadow_rays", "screen_tiles", "chunk_budget"]

TILE = 16  # pixels per side of a screen tile
CULL_SIGMAS = 20.0  # coverage is cut to 0 beyond 20 sigma (sigmoid(-20) ~ 2e-9)
_CHUNK_BYTES = 64 * 2**20  # budget for the pixels x faces intermediates of one chunk
_VALUES_PER_PAIR = 80  # tensors of size (pixels, faces) alive in one chunk, forward and backward


def chunk_budget(element_size: int, values_per_pair: int = _VALUES_PER_PAIR) -> int:
    """Largest pixels x faces product of one chunk for the given float size in bytes (and the
    number of (pixels, faces)-sized values alive per pair; pass more for a ``PairShader``)."""
    return _CHUNK_BYTES // (values_per_pair * element_size)


class PairShader:
    """Per pixel-face values for ``soft_rasterize``, evaluated only on the pairs where the face
    covers the pixel (coverage > 0).

    ``fn(pix, faces, values, d_dx, d_dy, feat, *params) -> (L, C)`` for L such pairs: ``pix``
    (L,) and ``faces`` (L,) their global pixel and face indices, ``values`` (L, A) the per-vertex
    attributes interpolated at the pixel centre, ``d_dx`` / ``d_dy`` (L, D) the screen
    derivatives [per px] of the first ``derivatives`` attributes, ``feat`` (L, C0) the faces'
    features. ``attrs`` (T, 3, A) per-vertex attributes of all faces; ``params`` the tensors the
    function uses (gradients reach them); ``channels`` C the number of values it returns per pair.
    """

    def __init__(self, fn, attrs: torch.Tensor, params=(), *, derivatives: int = 0, channels: int):
        self.fn, self.attrs, self.params = fn, attrs, tuple(params)
        self.derivatives, self.channels = int(derivatives), int(channels)


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


def composite_faces(xy, tri, key_data, z_range, interior, feat, bg, sigma, orthographic, shading=None):
    """Soft front-to-back compositing of F faces over P pixels.

    xy (P, 2) pixel centres; tri (F, 3, 2) screen vertices [px]; key_data (F, 3) per-vertex 1/z
    (perspective) or z (orthographic); z_range (F, 2) min / max vertex depth; interior (F, 3) int8
    per edge (edge k is opposite vertex k): 0 silhouette (soft), 1 interior and owning pixel centres
    exactly on it, 2 interior and not owning them; feat (F, C) per-face values; bg (P, C); sigma [px].
    ``shading``: optional (PairShader, pix (P,), faces (F,), attrs (F, 3, A), params) making the
    composited values per pixel-face pair (bg then has the shader's channels).
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
    if shading is None:
        out = weight @ feat + trans[:, -1:] * bg
    else:  # per pair, on the covered pairs only
        shader, pix, faces, attrs, params = shading
        p_idx, f_idx = (cover > 0).detach().nonzero().unbind(1)
        values, d_dx, d_dy = _interpolate(func[:, p_idx, f_idx], area[f_idx], tri[f_idx], key_data[f_idx],
                                          attrs[f_idx], orthographic, shader.derivatives)
        pair = shader.fn(pix[p_idx], faces[f_idx], values, d_dx, d_dy, feat[f_idx], *params)
        out = (trans[:, -1:] * bg).index_add(0, p_idx, weight[p_idx, f_idx][:, None] * pair)
    return out, 1.0 - trans[:, -1], hard_z, hard_face


def _interpolate(func, area, tri, key_data, attrs, orthographic, derivatives):
    """Per-vertex attributes at L pixel-face pairs, perspective-correct: values (L, A) and the
    screen derivatives (L, D) of the first D attributes along x and y.

    ``func`` (3, L) edge functions of the pairs, ``area`` (L,) their faces' signed doubled screen
    areas, ``tri`` (L, 3, 2), ``key_data`` (L, 3) (1/z per vertex for perspective), ``attrs``
    (L, 3, A). Screen barycentrics are the edge functions over |area| (affine in the pixel, so
    they extrapolate linearly outside a face); with w = 1/z per vertex the perspective-correct
    weights are b_k w_k / s, s = sum_k b_k w_k.
    """
    bary = (func / area.abs()[None]).T  # (L, 3)
    start = tri[:, [1, 2, 0]]  # edge k runs from vertex k+1 to vertex k+2
    edge = tri[:, [2, 0, 1]] - start  # (L, 3, 2)
    scale = (torch.sign(area).detach() / area.abs())[:, None]
    gx, gy = -edge[..., 1] * scale, edge[..., 0] * scale  # d bary_k / dx, d bary_k / dy: (L, 3)
    lead = attrs[..., :derivatives]
    if orthographic:
        values = (bary[..., None] * attrs).sum(1)
        return values, (gx[..., None] * lead).sum(1), (gy[..., None] * lead).sum(1)
    w = key_data  # (L, 3) 1/z per vertex
    s = torch.maximum((bary * w).sum(1), 0.25 * w.amin(1).detach())[:, None]  # the plane stays in front
    values = ((bary * w)[..., None] * attrs).sum(1) / s
    # d/dx of (sum_k b_k w_k A_k) / s = sum_k (db_k/dx) w_k (A_k - value) / s
    rel = lead - values[:, None, :derivatives]
    d_dx = ((gx * w)[..., None] * rel).sum(1) / s
    d_dy = ((gy * w)[..., None] * rel).sum(1) / s
    return values, d_dx, d_dy


class _SoftRaster(torch.autograd.Function):
    """Chunked soft rasterisation; backward recomputes each chunk so memory stays per chunk."""

    @staticmethod
    def forward(ctx, plan, fixed, tri, feat, bg, sigma, key_data, attrs, *params):
        xy, z_range, interior, orthographic, shader = fixed
        out, alpha = bg.clone(), bg.new_zeros(bg.shape[0])
        hard_z = bg.new_full((bg.shape[0],), float("inf"))
        hard_face = torch.full((bg.shape[0],), -1, dtype=torch.long, device=bg.device)
        for pix, faces in plan:
            shading = None if shader is None else (shader, pix, faces, attrs[faces], params)
            o, a, hz, hf = composite_faces(xy[pix], tri[faces], key_data[faces], z_range[faces], interior[faces],
                                           feat[faces], bg[pix], sigma, orthographic, shading)
            out[pix], alpha[pix], hard_z[pix] = o, a, hz
            hard_face[pix] = torch.where(hf >= 0, faces[hf.clamp(min=0)], hf)
        ctx.plan, ctx.fixed = plan, fixed
        ctx.save_for_backward(tri, feat, bg, sigma, key_data, attrs, *params)
        ctx.mark_non_differentiable(hard_z, hard_face)
        return out, alpha, hard_z, hard_face

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_alpha, _g_z, _g_face):
        saved = ctx.saved_tensors
        tri, feat, bg, sigma, key_data, attrs = saved[:6]
        params = saved[6:]
        xy, z_range, interior, orthographic, shader = ctx.fixed
        inputs = (tri, feat, bg, sigma, key_data, attrs, *params)
        need = list(ctx.needs_input_grad[2:])
        if shader is None:  # key data and attributes only act through a shader
            need[4] = need[5] = False
        grads = [torch.zeros_like(x) if n else None for x, n in zip(inputs, need)]
        if need[2]:
            grads[2] = g_out.clone()  # pixels no face reaches show the background unchanged
        per_face = (0, 1, 4, 5)
        for pix, faces in ctx.plan:
            with torch.enable_grad():
                leaves = [(x[faces] if i in per_face else x[pix] if i == 2 else x).detach().requires_grad_(n)
                          if x is not None else None for i, (x, n) in enumerate(zip(inputs, need))]
                shading = None if shader is None else (shader, pix, faces, leaves[5], tuple(leaves[6:]))
                o, a, _, _ = composite_faces(xy[pix], leaves[0], leaves[4], z_range[faces], interior[faces],
                                             leaves[1], leaves[2], leaves[3], orthographic, shading)
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
                if i in per_face:
                    grads[i].index_add_(0, faces, g)
                elif i == 2:
                    grads[2][pix] = g
                else:
                    grads[i] += g
        return (None, None, *grads)


def soft_rasterize(plan, xy, tri, key_data, z_range, interior, feat, bg, sigma, orthographic,
                   shader: PairShader | None = None):
    """Run the chunked rasteriser over ``plan``; see ``composite_faces`` for the arguments.

    Returns (values (P, C), alpha (P,), hard depth (P,), hard face index (P,) global, -1 = none);
    values and alpha are differentiable in ``tri``, ``feat``, ``bg`` and ``sigma``, and with a
    ``shader`` also in ``key_data`` (per-vertex depths), its attributes and its parameters.
    """
    if shader is None:
        fixed = (xy, z_range.detach(), interior, orthographic, None)
        return _SoftRaster.apply(plan, fixed, tri, feat, bg, sigma, key_data.detach(), None)
    fixed = (xy, z_range.detach(), interior, orthographic, shader)
    return _SoftRaster.apply(plan, fixed, tri, feat, bg, sigma, key_data, shader.attrs, *shader.params)


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


def _light_frame(axis):
    """Two unit vectors completing the unit ``axis`` (3,) to an orthonormal frame."""
    helper = torch.zeros_like(axis)
    helper[int(torch.argmin(axis.abs()))] = 1.0
    e1 = torch.linalg.cross(axis, helper)
    e1 = e1 / e1.norm()
    return e1, torch.linalg.cross(axis, e1)


def shadow_rays(points, active, point_object, triangles, triangle_object, light, tiles, *, position=None,
                chunk_pairs: int = 2**18):
    """Hard shadow test of surface points against triangles, binned by screen tiles.

    points (P, 3) world [m]; active (P,) bool, the points to test; point_object (P,) long, the
    object each point lies on (-1: none, e.g. the ground); triangles (T, 3, 3) world [m] with
    triangle_object (T,) long: a point is never shadowed by its own object's triangles (no
    self-shadowing, so no shadow acne). ``light`` (3,) unit direction the light travels (a
    directional light, ``position`` None) or the axis of a spot light at ``position`` (3,).
    A point is shadowed when the segment from it towards the light (to the light's position for a
    spot) meets a triangle (Moller-Trumbore). Each tile tests only the triangles whose boxes in the
    light's view (its orthographic plane, or its perspective image for a spot) overlap the box of
    the tile's points. Returns shadowed (P,) bool. Not differentiable.
    """
    shadow = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    if len(triangles) == 0 or not bool(active.any()):
        return shadow
    with torch.no_grad():
        dtype = points.dtype
        tris, light = triangles.to(dtype), light.to(dtype)
        e1, e2 = _light_frame(light)
        if position is None:
            def view(x):  # (..., 3) -> light-plane coordinates (..., 2), all valid
                return torch.stack([x @ e1, x @ e2], -1), torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        else:
            position = position.to(dtype)

            def view(x):  # perspective image of the spot light; points behind its plane are invalid
                d = x - position
                depth = d @ light
                ok = depth > 1e-9
                safe = torch.where(ok, depth, torch.ones_like(depth))[..., None]
                return torch.stack([d @ e1, d @ e2], -1) / safe, ok
        flat, ok = view(tris)
        lo = torch.where(ok.all(1)[:, None], flat.amin(1), torch.full_like(flat[:, 0], -float("inf")))
        hi = torch.where(ok.all(1)[:, None], flat.amax(1), torch.full_like(flat[:, 0], float("inf")))
        # how far towards the light each triangle reaches: it cannot shade points beyond that
        toward = -(tris @ light) if position is None else -((tris - position) @ light)
        reach = toward.amax(1)
        edge1, edge2 = tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
        for pix in tiles:
            sel = pix[active[pix]]
            if len(sel) == 0:
                continue
            q = points[sel]
            qf, q_ok = view(q)
            qf = qf[q_ok] if bool(q_ok.any()) else qf[:0]
            if len(qf) == 0:
                continue
            q_toward = -(q @ light) if position is None else -((q - position) @ light)
            near = (((hi >= qf.amin(0)) & (lo <= qf.amax(0))).all(1) & (reach > q_toward.min())).nonzero()[:, 0]
            if len(near) == 0:
                continue
            step = max(1, chunk_pairs // len(sel))
            for start in range(0, len(near), step):
                idx = near[start:start + step]
                hit = _segment_hits(q, -light if position is None else None, position, tris[idx, 0], edge1[idx],
                                    edge2[idx])
                hit &= triangle_object[idx][None, :] != point_object[sel][:, None]
                shadow[sel] |= hit.any(1)
    return shadow


def _segment_hits(origins, direction, position, v0, edge1, edge2):
    """(P, T) bool: does the ray from each origin towards ``direction`` (3,) (or the segment to
    ``position`` (3,)) hit each triangle (v0, edges) at a distance beyond a small offset?"""
    if direction is None:
        to_light = position[None] - origins
        length = to_light.norm(dim=1, keepdim=True).clamp(min=1e-30)
        d = (to_light / length)[:, None, :]  # (P, 1, 3)
        t_max = length
    else:
        d = direction[None, None, :]
        t_max = None
    shape = (origins.shape[0], len(v0), 3)
    d = d.expand(shape)
    pvec = torch.linalg.cross(d, edge2[None].expand(shape))
    det = (edge1[None] * pvec).sum(-1)
    ok = det.abs() > 1e-12 * (edge1.norm(dim=1) * edge2.norm(dim=1))[None]
    inv = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    svec = origins[:, None, :] - v0[None]
    u = (svec * pvec).sum(-1) * inv
    qvec = torch.linalg.cross(svec, edge1[None].expand_as(svec))
    v = (qvec * d).sum(-1) * inv
    t = (qvec * edge2[None]).sum(-1) * inv
    scale = edge1.norm(dim=1).clamp(min=1e-12)[None]
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6 * scale)
    if t_max is not None:
        hit &= t < t_max
    return hit
