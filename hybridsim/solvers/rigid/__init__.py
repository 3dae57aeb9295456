"""Differentiable rigid bodies (Warp and Taichi kernels, torch autograd bridge).

Builder -> ``finalize(device, dtype)`` -> RigidModel -> ``model.state()``;
``SolverRigid(model, backend=...).step(state_in, state_out, control, dt)`` or
``step_differentiable(state, control, dt)``. ``RigidBoundary`` exposes the bodies to other
solvers (signed distance, velocity, force accumulation).
"""

from .boundary import RigidBoundary
from .builder import RigidBuilder
from .model import RigidControl, RigidModel, RigidState, quat_from_rotation_vector, quat_multiply, quat_rotate
from .solver import SolverRigid

__all__ = ["RigidBuilder", "RigidModel", "RigidState", "RigidControl", "SolverRigid", "RigidBoundary",
           "quat_from_rotation_vector", "quat_multiply", "quat_rotate"]
