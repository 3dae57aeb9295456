"""Neural parts of hybridsim: learned motion priors and the video refiner."""

from .motion_prior import PriorRegularizer, PriorTrainingResult, ResidualForcePrior, train_motion_prior

__all__ = ["ResidualForcePrior", "PriorRegularizer", "PriorTrainingResult", "train_motion_prior"]

from .refiner import CONFIGS as REFINER_CONFIGS, RefinerConfig, VideoRefiner, layer_features  # noqa: E402
from .train_refiner import RefinerPair, RefinerTrainingResult, prepare_pair, train_refiner  # noqa: E402

__all__ += ["VideoRefiner", "RefinerConfig", "REFINER_CONFIGS", "layer_features", "RefinerPair",
            "RefinerTrainingResult", "prepare_pair", "train_refiner"]

from .fluid_prior import DivergenceFreeFluidPrior  # noqa: E402

__all__ += ["DivergenceFreeFluidPrior"]
