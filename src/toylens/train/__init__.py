"""Training: the loop, optimiser and schedule, regularisers, checkpoints."""

from toylens.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
