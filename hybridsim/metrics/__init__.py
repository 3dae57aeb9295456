"""Motion-quality metrics of videos (warping error, flow consistency, flicker) and physical
plausibility of simulated states per simulator (energy drift, momentum, penetration, divergence,
mass budget, volume change)."""

from .physics import (fluid_physics_metrics, fluid_rigid_face_geometry, mpm_physics_metrics, rigid_physics_metrics,
                      scene_physics_metrics, sphere_physics_metrics)
from .video import flicker, flow_consistency, warp, warping_error

__all__ = ["warp", "warping_error", "flow_consistency", "flicker", "sphere_physics_metrics", "rigid_physics_metrics",
           "fluid_physics_metrics", "mpm_physics_metrics", "scene_physics_metrics", "fluid_rigid_face_geometry"]
