"""2D Eulerian grid fluid (smoke) on a staggered MAC grid, with Warp and Taichi kernels.

Build a domain with ``GridFluidBuilder``, step it with ``SolverGridFluid`` (``step`` raw,
``step_differentiable`` through torch autograd), or run ``rollout_grid_fluid``. See
docs/grid_fluid.md for the numerics.
"""

from .bodies import GridFluidBody, body_face_geometry, body_impulses, project_with_pressure
from .model import GridFluidBuilder, GridFluidControl, GridFluidModel, GridFluidObstacle, GridFluidState
from .pressure import PressureProjection, SolveResult, ViscousDiffusion, conjugate_gradient
from .rollout import GridFluidTrajectory, rollout_grid_fluid
from .solver import ADVECTION_SCHEMES, DENSITY_ADVECTION_SCHEMES, SolverGridFluid

__all__ = [
    "ADVECTION_SCHEMES", "DENSITY_ADVECTION_SCHEMES", "GridFluidBody", "GridFluidBuilder", "GridFluidControl", "GridFluidModel",
    "GridFluidObstacle", "GridFluidState", "GridFluidTrajectory", "PressureProjection", "SolveResult", "SolverGridFluid",
    "ViscousDiffusion", "body_face_geometry", "body_impulses", "conjugate_gradient", "project_with_pressure",
    "rollout_grid_fluid",
]
