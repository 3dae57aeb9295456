"""MLS-MPM solver (particle/grid hybrid) with Warp and Taichi kernels and a torch autograd bridge.

    from hybridsim.solvers.mpm import MPMBuilder, SolverMPM, rollout_mpm, substep_count
    builder = MPMBuilder(dim=2, resolution=64)
    water = builder.add_material("liquid", bulk_modulus=2e4, viscosity=1.0, density=1000.0)
    builder.add_box((0.1, 0.1), (0.4, 0.6), material=water, color=(0.2, 0.4, 0.9))
    model = builder.finalize()
    solver = SolverMPM(model, backend="warp")
    substeps = substep_count(model, 1 / 30)  # dt bound of the stiffest material
    trajectory = rollout_mpm(solver, frames=60, substeps=substeps, dt=1 / 30 / substeps)

Kernels: kernels/warp/mpm.py and kernels/taichi/mpm.py (``p2g``, ``grid_update``, ``g2p``,
``project_plasticity``). See docs/mpm.md.
"""

from __future__ import annotations

from .model import (MATERIAL_KINDS, WALL_MODES, MPMControl, MPMGrid, MPMGridSpec, MPMModel, MPMParticleParameters,
                    MPMState, check_dt, lame_parameters, stable_dt, substep_count)
from .rollout import MPMTrajectory, rollout_mpm
from .sampling import MPMBuilder, lattice_box, lattice_mesh, lattice_sphere, load_watertight_mesh
from .solver import GridHook, SolverMPM

__all__ = [
    "MATERIAL_KINDS", "WALL_MODES", "MPMBuilder", "MPMControl", "MPMGrid", "MPMGridSpec", "MPMModel",
    "MPMParticleParameters", "MPMState", "MPMTrajectory", "GridHook", "SolverMPM", "check_dt", "lame_parameters",
    "lattice_box", "lattice_mesh", "lattice_sphere", "load_watertight_mesh", "rollout_mpm", "stable_dt",
    "substep_count",
]
