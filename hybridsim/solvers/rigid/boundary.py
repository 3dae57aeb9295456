"""RigidBoundary: what other solvers (fluids, MPM) see of the rigid bodies.

Torch-level and differentiable: ``signed_distance_and_velocity(points)`` gives the distance to
the nearest body surface, its outward normal and the rigid velocity of that body at the points;
``apply_forces`` accumulates reaction loads that ``control()`` hands to the next rigid step.
"""

from __future__ import annotations

import torch

from .model import RigidControl, RigidModel, RigidState, quat_rotate
from .shapes import SHAPE_BOX, SHAPE_CAPSULE, SHAPE_MESH, SHAPE_SPHERE

__all__ = ["RigidBoundary"]


def _conjugate(q: torch.Tensor) -> torch.Tensor:
    return torch.cat([-q[..., :3], q[..., 3:]], dim=-1)


class RigidBoundary:
    """The dynamic shapes of a RigidModel as a moving boundary (static shapes and the ground are
    left to the coupled solver's own walls)."""

    def __init__(self, model: RigidModel):
        self.model = model
        self.shapes = [(index, s) for index, s in enumerate(model.shapes) if s.body >= 0]
        self._force = torch.zeros(model.body_count, 3, dtype=model.dtype, device=model.device)
        self._torque = torch.zeros_like(self._force)

    def signed_distance_and_velocity(self, state: RigidState, points: torch.Tensor):
        """For points (N, 3) [m]: (phi (N,) [m], negative inside; normal (N, 3); velocity (N, 3) [m/s]).
        Convex meshes use their hull planes (exact inside, a lower bound of the distance outside)."""
        model = self.model
        best_phi = torch.full(points.shape[:1], float("inf"), dtype=model.dtype, device=model.device)
        best_normal = torch.zeros_like(points)
        best_velocity = torch.zeros_like(points)
        for _, shape in self.shapes:
            b = shape.body
            q_body = state.body_orientation[b]
            centre = state.body_position[b] + quat_rotate(q_body, torch.as_tensor(shape.position, dtype=model.dtype, device=model.device))
            rotation = torch.as_tensor(shape.rotation, dtype=model.dtype, device=model.device)
            q_shape = _quat_product(q_body, rotation)
            local = quat_rotate(_conjugate(q_shape).expand(points.shape[0], 4), points - centre)
            phi, normal_local = _shape_distance(shape, local)
            normal = quat_rotate(q_shape.expand(points.shape[0], 4), normal_local)
            velocity = state.body_velocity[b] + torch.cross(state.body_angular_velocity[b].expand_as(points),
                                                             points - state.body_position[b], dim=1)
            closer = phi < best_phi
            best_phi = torch.where(closer, phi, best_phi)
            best_normal = torch.where(closer.unsqueeze(1), normal, best_normal)
            best_velocity = torch.where(closer.unsqueeze(1), velocity, best_velocity)
        return best_phi, best_normal, best_velocity

    def apply_forces(self, body_force: torch.Tensor, body_torque: torch.Tensor | None = None) -> None:
        """Accumulate forces [N] and world torques [N m] (each (B, 3)) for the next rigid step."""
        self._force = self._force + body_force
        if body_torque is not None:
            self._torque = self._torque + body_torque

    def control(self, base: RigidControl | None = None) -> RigidControl:
        """The accumulated loads (plus ``base``'s) as a RigidControl; resets the accumulator."""
        force, torque = self._force, self._torque
        if base is not None and base.body_force is not None:
            force = force + base.body_force
        if base is not None and base.body_torque is not None:
            torque = torque + base.body_torque
        self._force = torch.zeros_like(self._force)
        self._torque = torch.zeros_like(self._torque)
        return RigidControl(force, torque)


def _quat_product(a, b):
    from .model import quat_multiply

    return quat_multiply(a, b)


def _shape_distance(shape, local: torch.Tensor):
    eps = torch.finfo(local.dtype).eps
    if shape.kind == SHAPE_SPHERE:
        length = local.norm(dim=1).clamp_min(eps)
        return length - shape.size[0], local / length.unsqueeze(1)
    if shape.kind == SHAPE_CAPSULE:
        axis = torch.zeros_like(local)
        axis[:, 2] = local[:, 2].clamp(-shape.size[1], shape.size[1])
        diff = local - axis
        length = diff.norm(dim=1).clamp_min(eps)
        return length - shape.size[0], diff / length.unsqueeze(1)
    if shape.kind == SHAPE_BOX:
        half = torch.as_tensor(shape.size, dtype=local.dtype, device=local.device)
        q = local.abs() - half
        outside = q.clamp_min(0.0)
        out_len = outside.norm(dim=1)
        inside = q.max(dim=1)
        phi = torch.where(out_len > 0, out_len, inside.values)
        sign = torch.where(local < 0, -1.0, 1.0).to(local.dtype)
        n_out = sign * outside / out_len.clamp_min(eps).unsqueeze(1)
        n_in = sign * torch.nn.functional.one_hot(inside.indices, 3).to(local.dtype)
        return phi, torch.where((out_len > 0).unsqueeze(1), n_out, n_in)
    assert shape.kind == SHAPE_MESH
    planes = torch.as_tensor(shape.mesh_planes, dtype=local.dtype, device=local.device)
    distances = local @ planes[:, :3].T - planes[:, 3]
    phi, index = distances.max(dim=1)
    return phi, planes[index, :3]
