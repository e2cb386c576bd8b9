"""Training: the loop, one optimizer step (`TrainStep`), optimizer groups, schedules."""

from bittern.train.step import StepOutcome, TrainStep
from bittern.train.trainer import Trainer, TrainResult, train

__all__ = ["StepOutcome", "TrainResult", "TrainStep", "Trainer", "train"]
