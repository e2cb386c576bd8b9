"""Training: the loop, optimizer groups, schedules."""

from bittern.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]
