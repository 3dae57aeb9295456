"""hybridsim: differentiable physics (Warp and Taichi) plus neural video generation.

The package root imports nothing heavy: Warp, Taichi and torch load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "HybridsimError": ("hybridsim.errors", "HybridsimError"),
    "SceneError": ("hybridsim.errors", "SceneError"),
    "SimulationError": ("hybridsim.errors", "SimulationError"),
    "AssetError": ("hybridsim.errors", "AssetError"),
    "load_scene": ("hybridsim.scene", "load_scene"),
    "parse_scene": ("hybridsim.scene", "parse_scene"),
    "SceneBuilder": ("hybridsim.scene", "SceneBuilder"),
    "SceneSpec": ("hybridsim.scene", "SceneSpec"),
    "learn": ("hybridsim.scene", "learn"),
    "World": ("hybridsim.sim.world", "World"),
    "build_world": ("hybridsim.sim.world", "build_world"),
    "rollout": ("hybridsim.sim.rollout", "rollout"),
    "Trajectory": ("hybridsim.sim.rollout", "Trajectory"),
    "State": ("hybridsim.sim.state", "State"),
    "Control": ("hybridsim.sim.state", "Control"),
    "SphereModel": ("hybridsim.sim.state", "SphereModel"),
    "SolverSpheres": ("hybridsim.solvers.spheres", "SolverSpheres"),
    "render_trajectory": ("hybridsim.render.scene", "render_trajectory"),
    "generate": ("hybridsim.data", "generate"),
    "SolverRigid": ("hybridsim.solvers.rigid", "SolverRigid"),
    "SolverGridFluid": ("hybridsim.solvers.grid_fluid", "SolverGridFluid"),
    "SolverMPM": ("hybridsim.solvers.mpm", "SolverMPM"),
    "VideoRefiner": ("hybridsim.neural", "VideoRefiner"),
    "ResidualForcePrior": ("hybridsim.neural", "ResidualForcePrior"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybridsim' has no attribute {name!r}")


def __dir__():
    return __all__
