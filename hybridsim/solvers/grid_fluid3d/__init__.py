"""3D Eulerian grid fluid (smoke) on a staggered MAC grid, with Warp and Taichi kernels.

Build a domain with ``GridFluid3DBuilder``, step it with ``SolverGridFluid3D`` (``step`` raw,
``step_differentiable`` through torch autograd), or run ``rollout_grid_fluid3d``. The numerics,
solves and autograd bridge are the 2D solver's (hybridsim.solvers.grid_fluid); see the 3D
section of docs/grid_fluid.md.
"""

from .model import GridFluid3DBuilder, GridFluid3DControl, GridFluid3DModel, GridFluid3DState
from .rollout import GridFluid3DTrajectory, rollout_grid_fluid3d
from .solver import SolverGridFluid3D, project3d

__all__ = [
    "GridFluid3DBuilder", "GridFluid3DControl", "GridFluid3DModel", "GridFluid3DState", "GridFluid3DTrajectory",
    "SolverGridFluid3D", "project3d", "rollout_grid_fluid3d",
]
