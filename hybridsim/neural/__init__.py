"""Neural parts of hybridsim: learned motion priors (and, later, the video refiner)."""

from .motion_prior import PriorRegularizer, PriorTrainingResult, ResidualForcePrior, train_motion_prior

__all__ = ["ResidualForcePrior", "PriorRegularizer", "PriorTrainingResult", "train_motion_prior"]
