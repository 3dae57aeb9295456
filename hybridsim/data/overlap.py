"""Exact overlap depths of rigid scene objects, for the quality gates of generated rigid samples.

The solver's own contact points (box corners, sphere centres, capsule end centres, mesh hull
vertices; what :class:`~hybridsim.sim.guards.RigidGuard` checks) miss some overlaps: a capsule
crossing another capsule or a box edge at the middle of its segment, two boxes crossing edge to
edge. Here every pair of objects the solver would collide (different bodies, not both static) is
measured exactly for boxes, capsules and spheres, batched over frames, in float64 numpy:

* round-round (spheres are capsules of zero length): ``r_a + r_b - distance(segment_a, segment_b)``
* box-round: ``r - min_t signed_distance(box, segment(t))`` (the signed distance of a convex set is
  convex along a segment, so a golden-section search finds the minimum)
* box-box: the separating-axis test over the 15 axes; the smallest interval overlap is the
  penetration depth (negative: apart)
* each dynamic object against the ground plane: the depth of its lowest point.

Meshes are left to the guard's contact points. Depths are in metres, positive when overlapping.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["object_depths", "quat_matrices"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_GOLDEN_ITERATIONS = 40  # the bracket shrinks to 0.618^40 ~ 4e-9 of the segment


def quat_matrices(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of unit quaternions (..., 4) in (x, y, z, w) order."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def _segment(obj, centre: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(start (T, 3), end (T, 3), radius) of a sphere or capsule."""
    if obj.type == "sphere":
        return centre, centre, float(obj.radius)
    axis = rotation[..., :, 2] * float(obj.half_height)
    return centre - axis, centre + axis, float(obj.radius)


def _segment_distance(p1, q1, p2, q2) -> np.ndarray:
    """Distance (T,) between segments p1-q1 and p2-q2 (T, 3) (Ericson, Real-Time Collision Detection 5.1.9)."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a, e, f = (d1 * d1).sum(-1), (d2 * d2).sum(-1), (d2 * r).sum(-1)
    c, b = (d1 * r).sum(-1), (d1 * d2).sum(-1)
    eps = 1e-12
    denom = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > eps, np.clip((b * f - c * e) / np.where(denom > eps, denom, 1.0), 0.0, 1.0), 0.0)
        t = np.where(e > eps, (b * s + f) / np.where(e > eps, e, 1.0), 0.0)
        s_low = np.where(a > eps, np.clip(-c / np.where(a > eps, a, 1.0), 0.0, 1.0), 0.0)
        s_high = np.where(a > eps, np.clip((b - c) / np.where(a > eps, a, 1.0), 0.0, 1.0), 0.0)
    s = np.where(t < 0.0, s_low, np.where(t > 1.0, s_high, s))
    s = np.where(e > eps, s, s_low)  # the second segment is a point: the closest point of the first to it
    t = np.clip(t, 0.0, 1.0)
    return np.linalg.norm((p1 + d1 * s[..., None]) - (p2 + d2 * t[..., None]), axis=-1)


def _box_signed_distance(points, centre, rotation, half) -> np.ndarray:
    """Signed distance (T,) of points (T, 3) to boxes (centre (T, 3), rotation (T, 3, 3), half extents (3,))."""
    local = np.einsum("tji,tj->ti", rotation, points - centre)
    q = np.abs(local) - half
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(-1), 0.0)
    return outside + inside


def _box_segment_depth(centre, rotation, half, start, end, radius) -> np.ndarray:
    """radius - min over the segment of the signed distance to the box (T,)."""
    lo, hi = np.zeros(len(centre)), np.ones(len(centre))

    def at(t):
        return _box_signed_distance(start + (end - start) * t[:, None], centre, rotation, half)

    for _ in range(_GOLDEN_ITERATIONS):  # both points afresh each time: simple, and cheap at these sizes
        x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
        f1, f2 = at(x1), at(x2)
        left = f1 < f2  # the minimum lies in [lo, x2]
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
    ends = np.minimum(at(np.zeros(len(centre))), at(np.ones(len(centre))))
    best = np.minimum(ends, at(0.5 * (lo + hi)))
    return radius - best


def _box_box_depth(ca, ra, ha, cb, rb, hb) -> np.ndarray:
    """Separating-axis depth (T,) of two boxes: the smallest overlap of their projections over the
    15 axes (face normals and edge crossings); negative when an axis separates them."""
    axes = [ra[..., :, i] for i in range(3)] + [rb[..., :, i] for i in range(3)]
    for i in range(3):
        for j in range(3):
            axes.append(np.cross(ra[..., :, i], rb[..., :, j]))
    offset = cb - ca
    best = np.full(len(ca), np.inf)
    for axis in axes:
        norm = np.linalg.norm(axis, axis=-1)
        valid = norm > 1e-9  # parallel edges: the face axes cover it
        unit = axis / np.where(valid, norm, 1.0)[:, None]
        extent_a = (ha * np.abs(np.einsum("tji,tj->ti", ra, unit))).sum(-1)
        extent_b = (hb * np.abs(np.einsum("tji,tj->ti", rb, unit))).sum(-1)
        overlap = extent_a + extent_b - np.abs((offset * unit).sum(-1))
        best = np.where(valid, np.minimum(best, overlap), best)
    return best


def _ground_depth(obj, centre, rotation, height: float) -> np.ndarray:
    """Depth (T,) of an object's lowest point below the ground plane z = height."""
    if obj.type in ("box", "static_box"):
        half = np.asarray(obj.half_extents, dtype=np.float64)
        lowest = centre[:, 2] - (np.abs(rotation[:, 2, :]) * half).sum(-1)
    else:
        start, end, radius = _segment(obj, centre, rotation)
        lowest = np.minimum(start[:, 2], end[:, 2]) - radius
    return height - lowest


def object_depths(spec, poses: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Overlap depths over frames of every collidable pair and of every dynamic object against the
    ground: a list of ``(a, b, depth (T,))`` with ``a``, ``b`` scene object indices (``b = -1``:
    the ground). ``poses``: (T, K, 7) per-object position + quaternion (x, y, z, w), as
    :func:`hybridsim.render.rigid.rigid_poses` gives. Meshes are skipped (see the module docstring).
    """
    poses = np.asarray(poses, dtype=np.float64)
    centres, rotations = poses[..., :3], quat_matrices(poses[..., 3:])
    objects = spec.objects
    exact = [i for i, obj in enumerate(objects) if obj.type in ("box", "static_box", "capsule", "sphere")]
    out: list[tuple[int, int, np.ndarray]] = []
    if getattr(spec.ground, "enabled", True):
        for i in exact:
            if objects[i].type != "static_box":
                depth = _ground_depth(objects[i], centres[:, i], rotations[:, i], float(spec.ground.height))
                out.append((i, -1, depth))
    for n, i in enumerate(exact):
        for j in exact[n + 1:]:
            a, b = objects[i], objects[j]
            if a.type == "static_box" and b.type == "static_box":
                continue
            boxes = (a.type in ("box", "static_box"), b.type in ("box", "static_box"))
            if boxes == (True, True):
                depth = _box_box_depth(centres[:, i], rotations[:, i], np.asarray(a.half_extents, float),
                                       centres[:, j], rotations[:, j], np.asarray(b.half_extents, float))
            elif boxes == (False, False):
                p1, q1, r1 = _segment(a, centres[:, i], rotations[:, i])
                p2, q2, r2 = _segment(b, centres[:, j], rotations[:, j])
                depth = r1 + r2 - _segment_distance(p1, q1, p2, q2)
            else:
                box, round_ = (i, j) if boxes[0] else (j, i)
                start, end, radius = _segment(objects[round_], centres[:, round_], rotations[:, round_])
                depth = _box_segment_depth(centres[:, box], rotations[:, box],
                                           np.asarray(objects[box].half_extents, float), start, end, radius)
            out.append((i, j, depth))
    return out
