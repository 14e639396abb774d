"""Optimizers: SGD (momentum, Nesterov), Adam and AdamW, with PyTorch's update rules."""
from network.optim.adam import Adam, AdamW
from network.optim.optimizer import Optimizer
from network.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
