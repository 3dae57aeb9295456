"""Shared checks used by the test suite and by ``hybridsim gradcheck``: finite differences
against autodiff, and the same scene on both backends."""

from .reference import bounce_step_numpy
from .checks import (
    GradcheckRow,
    compare_backends,
    contact_count,
    finite_difference_gradcheck,
    scene_evaluator,
    state_loss,
)

__all__ = ["bounce_step_numpy", "GradcheckRow", "compare_backends", "contact_count", "finite_difference_gradcheck", "scene_evaluator",
           "state_loss"]
