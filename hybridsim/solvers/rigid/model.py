"""RigidModel, RigidState and RigidControl: plain containers of torch tensors.

``B`` is ``body_count``, ``S`` ``shape_count``, ``C`` ``contact_count`` (contact slots: one per
candidate point/shape pair, fixed at finalize, so warm-start impulses keep their meaning from
step to step), ``P`` ``spring_count``. Quaternions are (x, y, z, w). Body positions are centres
of mass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

__all__ = ["RigidModel", "RigidState", "RigidControl", "quat_from_rotation_vector", "quat_rotate", "quat_multiply"]


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (..., 4) quaternions (x, y, z, w)."""
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack([aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw,
                        aw * bw - ax * bx - ay * by - az * bz], dim=-1)


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate (..., 3) vectors by (..., 4) unit quaternions."""
    u = q[..., :3]
    t = 2.0 * torch.cross(u, v, dim=-1)
    return v + q[..., 3:4] * t + torch.cross(u, t, dim=-1)


def quat_from_rotation_vector(rotation_vector: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (..., 4) from a rotation vector (..., 3) [rad]; smooth at zero (differentiable)."""
    angle2 = (rotation_vector * rotation_vector).sum(-1, keepdim=True)
    small = angle2 < 1e-12
    angle = torch.sqrt(torch.where(small, torch.ones_like(angle2), angle2))
    # sin(a/2)/a with its Taylor series near zero, cos(a/2) likewise
    sinc = torch.where(small, 0.5 - angle2 / 48.0, torch.sin(0.5 * angle) / angle)
    cos = torch.where(small, 1.0 - angle2 / 8.0, torch.cos(0.5 * angle))
    return torch.cat([rotation_vector * sinc, cos], dim=-1)


@dataclass
class RigidModel:
    """Constants of a rigid-body scene (tensors marked learnable may carry gradients)."""

    body_count: int
    shape_count: int
    contact_count: int
    spring_count: int
    body_mass: torch.Tensor
    """Body masses [kg], shape (B,)."""
    body_inertia: torch.Tensor
    """Principal moments of inertia about the centre of mass [kg m^2], shape (B, 3)."""
    body_inertia_rotation: torch.Tensor
    """Rotation from the principal frame to the body frame, quaternion, shape (B, 4)."""
    body_position: torch.Tensor
    """Initial centre-of-mass positions [m], shape (B, 3)."""
    body_orientation: torch.Tensor
    """Initial orientations, quaternion (x, y, z, w), shape (B, 4)."""
    body_velocity: torch.Tensor
    """Initial linear velocities [m/s], shape (B, 3)."""
    body_angular_velocity: torch.Tensor
    """Initial angular velocities in world frame [rad/s], shape (B, 3)."""
    shape_body: torch.Tensor
    """Owning body of each shape (-1: static), int32, shape (S,)."""
    shape_friction: torch.Tensor
    """Coulomb friction coefficient of each shape [1], shape (S,)."""
    shape_restitution: torch.Tensor
    """Coefficient of restitution of each shape [1], shape (S,)."""
    ground_friction: torch.Tensor
    """Friction coefficient of the ground plane [1], shape () (contacts use the mean of both)."""
    ground_restitution: torch.Tensor
    """Restitution of the ground plane [1], shape () (contacts use the mean of both)."""
    gravity: torch.Tensor
    """Gravitational acceleration [m/s^2], shape (3,)."""
    contact: dict
    """Contact slot geometry (int32 / real tensors of leading size C), see builder._contact_slots."""
    spring: dict
    """Spring arrays: body (P, 2) int64, anchor_a/anchor_b (P, 3), stiffness, damping, rest_length (P,)."""
    shapes: list
    """The builder's ShapeSpec list, in body frames relative to the centres of mass."""
    has_ground: bool = True
    ground_height: float = 0.0
    """Height of the ground plane z = ground_height [m]."""
    restitution_threshold: float = 0.05
    """Impacts slower than this [m/s] do not bounce (resting contacts stay at rest)."""
    iterations: int = 12
    """Velocity (sequential impulse) passes per step, after one warm-start pass."""
    position_iterations: int = 4
    """Pseudo-velocity (split impulse) passes per step."""
    face_tolerance: float = 1.0e-3
    """Relative slack when testing that a box corner lies over the reference face."""
    contact_margin: float = 0.01
    """Gap [m] below which a contact is speculative-active (it lets the gap close, never cross)."""
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    joint_count: int = 0
    joint: dict = field(default_factory=dict)
    """Joint arrays (see ``joints.py``): body (J, 2) int64 (-1: the world), kind (J,) int64
    (0 ball, 1 hinge), anchor_a / anchor_b (J, 3) in the bodies' centre-of-mass frames (world
    point for the world), axis_a / axis_b (J, 3) unit hinge axes likewise."""
    joint_iterations: int = 4
    """Gauss-Seidel sweeps over the joints per step."""
    world_count: int = 1
    """Independent worlds in the model (``RigidBuilder.add_builder``): they share the ground but
    never touch each other, and step together."""
    body_world: torch.Tensor | None = None
    """World of each body, int32, shape (B,); world w's bodies are contiguous, after world w-1's."""
    hull_planes: torch.Tensor | None = None
    """Convex-mesh hull planes (nx, ny, nz, offset) in their shapes' frames, n . x <= offset inside,
    every mesh's distinct planes concatenated, shape (H, 4) (H >= 1: a zero row when there are no
    meshes); a mesh-target slot's ``contact["b_hull"]`` (C, 2) int32 is its (start, count) here."""
    has_mesh_targets: bool = False
    """Whether any contact slot tests a point against a convex mesh's hull planes (kind 5)."""

    def state(self, requires_grad: bool = False) -> "RigidState":
        """A fresh state holding the initial body poses and velocities and zero contact impulses."""
        state = RigidState(self.body_position.detach().clone(), self.body_orientation.detach().clone(),
                           self.body_velocity.detach().clone(), self.body_angular_velocity.detach().clone(),
                           torch.zeros(self.contact_count, 3, dtype=self.dtype, device=self.device))
        if requires_grad:
            for f in fields(state):
                getattr(state, f.name).requires_grad_(True)
        return state

    def control(self) -> "RigidControl":
        """A control with zero forces and torques."""
        zeros = torch.zeros(self.body_count, 3, dtype=self.dtype, device=self.device)
        return RigidControl(zeros, zeros.clone())

    def slot_materials(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slot (friction, restitution), each (C,): the mean of the two shapes' values
        (torch ops, so gradients reach shape_friction/shape_restitution and the ground's)."""
        friction = torch.cat([self.shape_friction, self.ground_friction.reshape(1)])
        restitution = torch.cat([self.shape_restitution, self.ground_restitution.reshape(1)])
        pair = self.contact["shape"].long()
        pair = torch.where(pair < 0, torch.full_like(pair, self.shape_count), pair)
        return 0.5 * (friction[pair[:, 0]] + friction[pair[:, 1]]), 0.5 * (restitution[pair[:, 0]] + restitution[pair[:, 1]])


@dataclass
class RigidState:
    """Time-varying rigid-body state; ``step()`` reads one and writes another."""

    body_position: torch.Tensor
    """Centre-of-mass positions [m], shape (B, 3)."""
    body_orientation: torch.Tensor
    """Orientations, unit quaternion (x, y, z, w), shape (B, 4)."""
    body_velocity: torch.Tensor
    """Linear velocities of the centres of mass [m/s], shape (B, 3)."""
    body_angular_velocity: torch.Tensor
    """Angular velocities in world frame [rad/s], shape (B, 3)."""
    contact_impulse: torch.Tensor
    """Accumulated (normal, tangent1, tangent2) impulse of each contact slot [N s], shape (C, 3) (warm start)."""

    def clone(self) -> "RigidState":
        return RigidState(*(getattr(self, f.name).clone() for f in fields(self)))

    def detach(self) -> "RigidState":
        return RigidState(*(getattr(self, f.name).detach() for f in fields(self)))

    def empty_like(self) -> "RigidState":
        return RigidState(*(torch.empty_like(getattr(self, f.name)) for f in fields(self)))

    def tensors(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass
class RigidControl:
    """External loads applied during a step (constant over it)."""

    body_force: torch.Tensor | None = None
    """Force through the centre of mass [N], shape (B, 3); None means zero."""
    body_torque: torch.Tensor | None = None
    """Torque in world frame [N m], shape (B, 3); None means zero."""

    def with_force(self, force: torch.Tensor) -> "RigidControl":
        return replace(self, body_force=force)
