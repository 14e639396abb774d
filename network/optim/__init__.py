"""Optimizers: SGD (momentum, Nesterov), Adam and AdamW, with PyTorch's update rules."""
from mpiprop.network.optim.adam import Adam, AdamW
from mpiprop.network.optim.optimizer import Optimizer
from mpiprop.network.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
