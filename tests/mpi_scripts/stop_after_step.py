"""A Trainer callback for tests: stop training once a given global step has ended."""
from __future__ import annotations

from mpiprop.network.training.callbacks import Callback


class StopAfterStep(Callback):
    """Sets `trainer.stop_training` at the end of global step `step` (-1: never)."""

    def __init__(self, step: int):
        self.step = step

    def on_batch_end(self, trainer, step, loss):
        if step == self.step:
            trainer.stop_training = True
