"""Training: the loop, its configuration, the optimiser, exact resume, run folders and signals."""
from .config import TrainConfig
from .resume import NonFiniteLoss, SaveError
from .trainer import Trainer

__all__ = ["NonFiniteLoss", "SaveError", "TrainConfig", "Trainer"]
