"""Optimizers (SGD, Adam, AdamW) and what acts on gradients before a step: clipping, penalties, loss scaling, schedules."""
from mpiprop.network.optim.adam import Adam, AdamW
from mpiprop.network.optim.optimizer import Optimizer
from mpiprop.network.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
