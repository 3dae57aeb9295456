"""Motion-quality metrics of videos (warping error, flow consistency, flicker) and physical
plausibility of simulated states (energy drift, momentum, penetration)."""

from .physics import sphere_physics_metrics
from .video import flicker, flow_consistency, warp, warping_error

__all__ = ["warp", "warping_error", "flow_consistency", "flicker", "sphere_physics_metrics"]
