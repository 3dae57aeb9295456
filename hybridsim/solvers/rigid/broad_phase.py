"""Broad phase of the rigid-body solver: which contact slots a step visits.

The builder enumerates one slot per candidate point/shape pair, so most slots of a pile are far
from any contact. A slot the collide phase marks inactive is an exact no-op of both solve phases
(its impulses are 0 and each body velocity it records is the one it read), so a step that skips
it gives the same bits. ``candidate_slots`` keeps every slot whose two shapes' bounding boxes
(per shape: the cube around the sphere about its body's centre of mass that holds it; a static
box's or mesh's world AABB; the half space below the ground) lie within a distance that no active slot
can exceed, and ``slot_chain`` rebuilds the Gauss-Seidel chain over the kept slots. The kept
slots stay in slot order, so results are deterministic and the same on both backends.

Why the distance bound holds: a slot is active only if its gap d (for point slots, the distance
between the two shapes) satisfies d <= margin + dt |v_n|, with |v_n| <= V_a + W_a R_a + V_b +
W_b (R_b + d) (V, W: bounds on linear and angular speed over the step, from the start velocities
and the loads; R: farthest shape point from its body's centre of mass). With dt W <= 1/4 that
gives d <= 2 (margin + dt (V_a + W_a R_a + V_b + W_b R_b)), and the box separation is at most d.
A box-box slot's gap is measured along the best separating axis, which we take to be at least
the distance over sqrt(3) (an argument, not a proof: ``tests/test_rigid_broad_phase.py`` checks
it on tumbling mixed piles); such pairs get twice the bound. Steps spinning faster than
dt W = 1/4 keep every slot.
"""

from __future__ import annotations

import numpy as np
import torch

from .shapes import SHAPE_BOX, SHAPE_CAPSULE, SHAPE_MESH, SHAPE_SPHERE

__all__ = ["ShapeBounds", "candidate_slots", "slot_chain", "SMALL_SLOT_COUNT"]

#: Below this many slots the broad phase costs more than it saves: every slot is visited.
SMALL_SLOT_COUNT = 64
_SPIN_LIMIT = 0.25     # dt * angular speed above which the bound is not trusted (keep all slots)


class ShapeBounds:
    """Per-shape constants of the broad phase, built once per model.

    A dynamic shape is bounded by the sphere about its body's centre of mass that holds it
    (radius ``reach``: no rotation to track); a static box by its world AABB; the ground by the
    half space below its plane. Boxes get the box-box factor (4), other shapes 2 (see the module
    docstring); a slot's allowance is the sum of its two shapes' expansions."""

    def __init__(self, model):
        shapes = model.shapes
        reach, factor, static_lo, static_hi = [], [], [], []
        for s in shapes:
            if s.kind == SHAPE_SPHERE:
                extent = s.size[0]
            elif s.kind == SHAPE_BOX:
                extent = float(np.linalg.norm(s.size))
            elif s.kind == SHAPE_CAPSULE:
                extent = s.size[0] + s.size[1]
            else:  # mesh: its hull vertices about the shape origin
                extent = float(np.linalg.norm(s.mesh_vertices, axis=1).max())
            reach.append(float(np.linalg.norm(s.position)) + extent)
            # boxes: separating-axis gaps; meshes: hull-plane gaps (lower bounds of the distance)
            factor.append(4.0 if s.kind in (SHAPE_BOX, SHAPE_MESH) else 2.0)
            if s.body < 0:  # a static box or mesh: its world AABB, fixed
                rotation = _rotation_matrix(np.asarray(s.rotation, float))
                if s.kind == SHAPE_MESH:
                    corners = np.asarray(s.mesh_vertices, float) @ rotation.T
                    lo, hi = corners.min(0), corners.max(0)
                else:
                    half = np.abs(rotation) @ np.asarray(s.size, float)
                    lo, hi = -half, half
                static_lo.append(np.asarray(s.position, float) + lo)
                static_hi.append(np.asarray(s.position, float) + hi)
        opts = dict(dtype=model.dtype, device=model.device)
        body = np.array([s.body for s in shapes], dtype=np.int64)
        dynamic = np.flatnonzero(body >= 0)
        static = np.flatnonzero(body < 0)
        margin = float(model.contact_margin)
        reach, factor = np.asarray(reach), np.asarray(factor)
        slack = 0.5e-4 + 1.0e-4 * reach  # float rounding of poses (the kernels compute gaps in their own order)
        # rows: dynamic shapes, static shapes, the ground; ``expand`` is what does not depend on the motion
        self.body = torch.as_tensor(body[dynamic], device=model.device)
        self.reach = torch.as_tensor(reach[dynamic], **opts)
        self.factor = torch.as_tensor(factor[dynamic], **opts)
        self.expand = torch.as_tensor(reach[dynamic] + factor[dynamic] * 0.5 * margin + slack[dynamic], **opts)
        static_expand = (factor[static] * 0.5 * margin + slack[static])[:, None]
        lo = np.concatenate([np.reshape(static_lo, (-1, 3)) - static_expand, [[-1e30, -1e30, -1e30]]])
        hi = np.concatenate([np.reshape(static_hi, (-1, 3)) + static_expand,
                             [[1e30, 1e30, float(model.ground_height) + margin]]])
        self.fixed = torch.as_tensor(np.concatenate([lo, -hi], axis=1), **opts)       # (rows, 6): lo, -hi
        row = np.empty(len(shapes) + 1, dtype=np.int64)  # shape index (-1: ground, last) -> row
        row[dynamic] = np.arange(len(dynamic))
        row[static] = len(dynamic) + np.arange(len(static))
        row[-1] = len(shapes)
        pair = model.contact["shape"].long().cpu().numpy()
        self.slot_a = torch.as_tensor(row[pair[:, 0]], device=model.device)
        self.slot_b = torch.as_tensor(row[pair[:, 1]], device=model.device)  # -1 indexes the ground row


def _rotation_matrix(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@torch.no_grad()
def candidate_slots(model, bounds: ShapeBounds, position, velocity, angular_velocity, force, torque,
                    dt: float) -> torch.Tensor | None:
    """Indices (K,) int64, ascending, of the slots that may be active this step; None: all of them.

    Inputs are the step's (B, 3) body positions, velocities and loads (see ``SolverRigid``)."""
    if model.contact_count < SMALL_SLOT_COUNT:
        return None
    inv_mass = 1.0 / model.body_mass.detach()
    # speed bounds over the step: at its start and after gravity and the loads
    speed = velocity.norm(dim=1) + dt * (model.gravity.detach().norm() * (inv_mass > 0) + inv_mass * force.norm(dim=1))
    spin = angular_velocity.norm(dim=1) + dt * (1.0 / model.body_inertia.detach()).amax(1) * torque.norm(dim=1)
    if float(spin.max()) * dt > _SPIN_LIMIT:
        return None
    body = bounds.body
    travel = dt * (speed.index_select(0, body) + spin.index_select(0, body) * bounds.reach)
    radius = (bounds.expand + bounds.factor * travel).unsqueeze(1)
    centre = position.index_select(0, body)
    box = torch.cat([torch.cat([centre - radius, -centre - radius], dim=1), bounds.fixed])  # lo, -hi
    # separation along an axis: lo_b - hi_a or lo_a - hi_b; both shapes' expansions are in their boxes
    lo_minus_hi = box.index_select(0, bounds.slot_b) + box.roll(3, dims=1).index_select(0, bounds.slot_a)
    return torch.nonzero(lo_minus_hi.amax(1) <= 0.0).squeeze(1)


def slot_chain(slot_body: torch.Tensor, body_count: int) -> dict:
    """The Gauss-Seidel chain of a list of slots (as ``builder._contact_slots`` makes it): for
    each (slot, side) the previous (slot, side) of the same body (-1, 0 if none), and each body's
    last (slot, side) (-1, 0 if none). ``slot_body`` is (K, 2) int32; results are int32 tensors
    on its device (computed in numpy: a few small array operations)."""
    count = slot_body.shape[0]
    flat = slot_body.reshape(-1).cpu().numpy().astype(np.int64)
    entries = np.flatnonzero(flat >= 0)  # entry e = 2 slot + side, ascending
    # body ids lie in [0, body_count): as uint16 they compare as they do as int64, so the stable
    # sort gives the same order, and numpy sorts 16-bit keys by radix sort (3-13x faster measured
    # for 1e3-1e6 entries; int32 keys gain nothing)
    keys = flat[entries].astype(np.uint16) if body_count <= 1 << 16 else flat[entries]
    order = np.argsort(keys, kind="stable")
    entries = entries[order]
    bodies = flat[entries]
    same = bodies[1:] == bodies[:-1]
    previous = np.full(2 * count, -1, np.int64)
    previous[entries[1:][same]] = entries[:-1][same]
    has = previous >= 0
    prev = np.where(has, previous // 2, -1).reshape(count, 2)
    prev_side = np.where(has, previous % 2, 0).reshape(count, 2)
    last_mask = np.append(~same, True) if len(bodies) else np.zeros(0, bool)
    last = np.full(body_count, -1, np.int64)
    last_side = np.zeros(body_count, np.int64)
    last[bodies[last_mask]] = entries[last_mask] // 2
    last_side[bodies[last_mask]] = entries[last_mask] % 2
    as_int = lambda a: torch.as_tensor(a.astype(np.int32), device=slot_body.device)  # noqa: E731
    return dict(prev=as_int(prev), prev_side=as_int(prev_side), body_last=as_int(last), body_last_side=as_int(last_side))
