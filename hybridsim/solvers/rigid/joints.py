"""Ball and hinge joints: position-level constraint projection after each step (torch ops).

After the contact step (Warp or Taichi kernels) has moved the bodies, each joint's error is
removed by Gauss-Seidel sweeps over the joints, moving both bodies by the generalised inverse
mass (as in position-based rigid-body dynamics, Mueller et al. 2020):

* ball: anchor points coincide. C = p_a - p_b (3 rows); with arms r, the 3x3 effective inverse
  mass is K = (1/m_a + 1/m_b) I - [r_a]x I_a^-1 [r_a]x - [r_b]x I_b^-1 [r_b]x, and the positional
  impulse is lambda = -K^-1 C: body a moves by lambda / m_a and turns by I_a^-1 (r_a x lambda),
  body b the opposite way.
* hinge: a ball joint plus axis alignment: with the axes n_a, n_b in world, the error e = n_a x n_b
  is removed by L = (I_a^-1 + I_b^-1)^-1 e, turning a by I_a^-1 L and b by -I_b^-1 L.

Then the velocities are projected the same way at the corrected poses: velocity impulses with
the same effective masses remove the relative anchor velocity (and, for a hinge, the relative
spin off its axis). Such impulses do no work along the allowed motion, so a joint removes only
the velocity that would break it (a pendulum keeps its period and, but for O(dt^2) per step,
its energy).

The jointed bodies' ground contacts are rows of the same sweeps (``_ground_push`` after each
position sweep, ``_ground_stop`` after each velocity sweep: one Jacobi pass each, pushes only), so
joints and ground contacts converge together and the projection cannot drive a link into the
ground (the contact kernels ran before and do not see the joints). Every operation is a torch op, so the two backends share these
numerics and gradients flow through the joints by autograd. A body index of -1 is the world.
"""

from __future__ import annotations

import torch

from .model import quat_multiply, quat_rotate

__all__ = ["project_joints", "joint_loads", "JOINT_BALL", "JOINT_HINGE", "quat_matrix"]

JOINT_BALL, JOINT_HINGE = 0, 1
_KIND_GROUND = 0  # builder.KIND_GROUND
_TOUCH = 1e-6  # [m] a ground row's velocity pass acts on points within this gap (after the position pass)


def quat_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) (x, y, z, w) -> rotation matrices (..., 3, 3)."""
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                        torch.stack([-y, x, zero], -1)], -2)


def _turn(q: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate unit quaternion q by the small world rotation vector ``angle`` (first order), renormalised."""
    q = q + 0.5 * quat_multiply(torch.cat([angle, torch.zeros_like(angle[:1])]), q)
    return q / q.norm()


def joint_loads(model, position, orientation, velocity, angular_velocity, force, torque):
    """Constraint forces and torques (B, 3) each that give the bodies the accelerations the joints
    allow, from the step's starting state and loads (gravity, external and spring loads; contacts
    are not known yet). Passed to the step as loads, they supply a pendulum's tension, centripetal
    term included, so the projection afterwards only removes O(dt^2) drift and the joint does not
    damp the motion. Ball rows only (a hinge's axis rows are left to the projection)."""
    joint = model.joint
    inv_mass = 1.0 / model.body_mass
    principal = quat_matrix(quat_multiply(orientation, model.body_inertia_rotation))
    inv_inertia = principal @ torch.diag_embed(1.0 / model.body_inertia) @ principal.transpose(1, 2)
    eye = torch.eye(3, dtype=position.dtype, device=position.device)
    gravity = model.gravity.reshape(3)
    f = list(force.unbind(0))
    t = list(torque.unbind(0))
    w = angular_velocity
    bodies = joint["body"].tolist()

    def anchor_acceleration(i, r):
        alpha = inv_inertia[i] @ t[i]
        return gravity + inv_mass[i] * f[i] + torch.linalg.cross(alpha, r) + torch.linalg.cross(w[i], torch.linalg.cross(w[i], r))

    for _ in range(model.joint_iterations):
        for j, (a, b) in enumerate(bodies):
            ra = quat_rotate(orientation[a], joint["anchor_a"][j])
            k = inv_mass[a] * eye - _skew(ra) @ inv_inertia[a] @ _skew(ra)
            rel = anchor_acceleration(a, ra)
            if b >= 0:
                rb = quat_rotate(orientation[b], joint["anchor_b"][j])
                k = k + inv_mass[b] * eye - _skew(rb) @ inv_inertia[b] @ _skew(rb)
                rel = rel - anchor_acceleration(b, rb)
            else:
                rb = None
            load = -torch.linalg.solve(k, rel)
            f[a] = f[a] + load
            t[a] = t[a] + torch.linalg.cross(ra, load)
            if b >= 0:
                f[b] = f[b] - load
                t[b] = t[b] - torch.linalg.cross(rb, load)
    return torch.stack(f) - force, torch.stack(t) - torque


def _ground_rows(model):
    """The ground contact slots of jointed bodies (builder ``KIND_GROUND``): body (N,) int64,
    point (N, 3) in the body's centre-of-mass frame, radius (N,), ground height (N,); None if none.
    The joint projection solves them together with the joints (see ``project_joints``)."""
    if not getattr(model, "has_ground", False) or not model.contact_count:
        return None
    contact = model.contact
    jointed = torch.zeros(model.body_count, dtype=torch.bool, device=contact["kind"].device)
    ends = model.joint["body"].reshape(-1)
    jointed[ends[ends >= 0]] = True
    body = contact["body"][:, 0].long()
    rows = torch.nonzero((contact["kind"] == _KIND_GROUND) & jointed[body]).squeeze(1)
    if rows.numel() == 0:
        return None
    return (body.index_select(0, rows), contact["point"].index_select(0, rows),
            contact["radius"].index_select(0, rows), contact["b_position"].index_select(0, rows)[:, 2])


def _ground_geometry(rows, position, orientation, inv_mass, inv_inertia):
    """Per row: gap, contact arm (centre of mass to the contact point), r x up, I^-1 (r x up) and
    the effective inverse mass along the ground normal."""
    body, point, radius, height = rows
    arm = quat_rotate(orientation.index_select(0, body), point)
    gap = position.index_select(0, body)[:, 2] + arm[:, 2] - radius - height
    up = torch.zeros_like(arm)
    up[:, 2] = 1.0
    arm = arm - radius[:, None] * up
    rn = torch.linalg.cross(arm, up)
    turn = (inv_inertia.index_select(0, body) @ rn.unsqueeze(-1)).squeeze(-1)
    w = inv_mass.index_select(0, body) + (rn * turn).sum(-1)
    return gap, arm, turn, w


def _split(rows, active, body_count):
    """Jacobi mass splitting: each active row of a body gets 1 / (its body's active rows)."""
    body = rows[0]
    count = torch.zeros(body_count, dtype=active.dtype, device=active.device).index_add(0, body, active)
    return active / count.clamp(min=1.0).index_select(0, body), count > 0


def _ground_push(rows, x, q, inv_mass, inv_inertia):
    """One Jacobi pass of the ground rows at position level: each penetrating point is pushed up
    to the ground by a positional impulse (only pushes); lists x, q are updated in place."""
    position, orientation = torch.stack(x), torch.stack(q)
    gap, arm, turn, w = _ground_geometry(rows, position, orientation, inv_mass, inv_inertia)
    share, moved = _split(rows, (gap < 0).to(gap.dtype), position.shape[0])
    push = share * torch.clamp(-gap, min=0.0) / w
    body = rows[0]
    dx = torch.zeros_like(position).index_add(0, body, torch.stack(
        [torch.zeros_like(push), torch.zeros_like(push), push * inv_mass.index_select(0, body)], -1))
    angle = torch.zeros_like(position).index_add(0, body, push[:, None] * turn)
    turned = orientation + 0.5 * quat_multiply(torch.cat([angle, torch.zeros_like(angle[:, :1])], -1), orientation)
    turned = turned / turned.norm(dim=-1, keepdim=True)
    position = torch.where(moved[:, None], position + dx, position)
    orientation = torch.where(moved[:, None], turned, orientation)
    x[:], q[:] = list(position.unbind(0)), list(orientation.unbind(0))


def _ground_stop(rows, x, q, v, w, inv_mass, inv_inertia):
    """One Jacobi pass of the ground rows at velocity level: a point touching the ground
    (gap <= _TOUCH) loses its approach velocity (only pushes); lists v, w are updated in place."""
    position, orientation = torch.stack(x), torch.stack(q)
    velocity, spin = torch.stack(v), torch.stack(w)
    gap, arm, turn, k = _ground_geometry(rows, position, orientation, inv_mass, inv_inertia)
    body = rows[0]
    vn = velocity.index_select(0, body)[:, 2] + torch.linalg.cross(spin.index_select(0, body), arm)[:, 2]
    share, moved = _split(rows, ((gap <= _TOUCH) & (vn < 0)).to(gap.dtype), position.shape[0])
    impulse = share * torch.clamp(-vn, min=0.0) / k
    dv = torch.zeros_like(velocity).index_add(0, body, torch.stack(
        [torch.zeros_like(impulse), torch.zeros_like(impulse), impulse * inv_mass.index_select(0, body)], -1))
    dw = torch.zeros_like(spin).index_add(0, body, impulse[:, None] * turn)
    velocity = torch.where(moved[:, None], velocity + dv, velocity)
    spin = torch.where(moved[:, None], spin + dw, spin)
    v[:], w[:] = list(velocity.unbind(0)), list(spin.unbind(0))


def project_joints(model, position: torch.Tensor, orientation: torch.Tensor, velocity: torch.Tensor,
                   angular_velocity: torch.Tensor, dt: float) -> tuple[torch.Tensor, ...]:
    """Project the stepped poses onto the joints; returns (position, orientation, velocity,
    angular_velocity), each a new tensor (the inputs are not modified)."""
    joint = model.joint
    inv_mass = 1.0 / model.body_mass
    principal = quat_matrix(quat_multiply(orientation, model.body_inertia_rotation))  # (B, 3, 3)
    inv_inertia = principal @ torch.diag_embed(1.0 / model.body_inertia) @ principal.transpose(1, 2)
    x = list(position.unbind(0))
    q = list(orientation.unbind(0))
    bodies = joint["body"].tolist()
    kinds = joint["kind"].tolist()
    eye = torch.eye(3, dtype=position.dtype, device=position.device)
    zero3 = torch.zeros(3, dtype=position.dtype, device=position.device)
    ground = _ground_rows(model)
    for _ in range(model.joint_iterations):
        for j, ((a, b), kind) in enumerate(zip(bodies, kinds)):
            ra = quat_rotate(q[a], joint["anchor_a"][j])
            pa = x[a] + ra
            k = inv_mass[a] * eye - _skew(ra) @ inv_inertia[a] @ _skew(ra)
            if b >= 0:
                rb = quat_rotate(q[b], joint["anchor_b"][j])
                pb = x[b] + rb
                k = k + inv_mass[b] * eye - _skew(rb) @ inv_inertia[b] @ _skew(rb)
            else:
                rb, pb = zero3, joint["anchor_b"][j]
            impulse = -torch.linalg.solve(k, pa - pb)
            x[a] = x[a] + inv_mass[a] * impulse
            q[a] = _turn(q[a], inv_inertia[a] @ torch.linalg.cross(ra, impulse))
            if b >= 0:
                x[b] = x[b] - inv_mass[b] * impulse
                q[b] = _turn(q[b], -(inv_inertia[b] @ torch.linalg.cross(rb, impulse)))
            if kind == JOINT_HINGE:
                na = quat_rotate(q[a], joint["axis_a"][j])
                nb = quat_rotate(q[b], joint["axis_b"][j]) if b >= 0 else joint["axis_b"][j]
                error = torch.linalg.cross(na, nb)
                w = inv_inertia[a] + (inv_inertia[b] if b >= 0 else 0.0 * eye)
                turn = torch.linalg.solve(w, error)
                q[a] = _turn(q[a], inv_inertia[a] @ turn)
                if b >= 0:
                    q[b] = _turn(q[b], -(inv_inertia[b] @ turn))
        if ground is not None:  # the jointed bodies' ground contacts, in the same sweeps
            _ground_push(ground, x, q, inv_mass, inv_inertia)
    # velocities: remove the relative velocity each joint forbids, at the projected poses, by
    # velocity impulses with the same effective masses (the joint's work on the bodies is zero)
    v = list(velocity.unbind(0))
    w = list(angular_velocity.unbind(0))
    for _ in range(model.joint_iterations):
        for j, ((a, b), kind) in enumerate(zip(bodies, kinds)):
            ra = quat_rotate(q[a], joint["anchor_a"][j])
            k = inv_mass[a] * eye - _skew(ra) @ inv_inertia[a] @ _skew(ra)
            rel = v[a] + torch.linalg.cross(w[a], ra)
            if b >= 0:
                rb = quat_rotate(q[b], joint["anchor_b"][j])
                k = k + inv_mass[b] * eye - _skew(rb) @ inv_inertia[b] @ _skew(rb)
                rel = rel - v[b] - torch.linalg.cross(w[b], rb)
            impulse = -torch.linalg.solve(k, rel)
            v[a] = v[a] + inv_mass[a] * impulse
            w[a] = w[a] + inv_inertia[a] @ torch.linalg.cross(ra, impulse)
            if b >= 0:
                v[b] = v[b] - inv_mass[b] * impulse
                w[b] = w[b] - inv_inertia[b] @ torch.linalg.cross(rb, impulse)
            if kind == JOINT_HINGE:  # only the spin about the hinge axis is free
                na = quat_rotate(q[a], joint["axis_a"][j])
                spin = w[a] - w[b] if b >= 0 else w[a]
                off_axis = spin - (spin @ na) * na
                inv = inv_inertia[a] + (inv_inertia[b] if b >= 0 else 0.0 * eye)
                angular = -torch.linalg.solve(inv, off_axis)
                w[a] = w[a] + inv_inertia[a] @ angular
                if b >= 0:
                    w[b] = w[b] - inv_inertia[b] @ angular
        if ground is not None:
            _ground_stop(ground, x, q, v, w, inv_mass, inv_inertia)
    return torch.stack(x), torch.stack(q), torch.stack(v), torch.stack(w)
