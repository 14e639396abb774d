"""network: explicit, layer-by-layer backpropagation on numpy and cupy."""
from network import init, optim
from network.activations import ELU, GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from network.backend import cupy_available, get_array_module, to_device, to_numpy
from network.batchnorm import BatchNorm1d
from network.clipping import clip_grad_norm_, clip_grad_value_, total_grad_norm
from network.diagnostics import gradient_health, gradient_norms
from network.dropout import Dropout
from network.flatten import Flatten
from network.gradcheck import GradcheckError, gradcheck
from network.layer import Layer
from network.linear import Linear
from network.losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from network.parameter import Parameter
from network.regularization import l1_penalty, l2_penalty, weights_only
from network.rng import manual_seed
from network.sequential import Sequential
from network import callbacks, datasets, schedules
from network.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from network.data import ArrayDataset, DataLoader
from network.trainer import Trainer

__all__ = [
    "init", "optim",
    "Layer", "Parameter", "Sequential", "Linear", "Flatten", "Dropout", "BatchNorm1d",
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ELU", "GELU", "Softmax",
    "Loss", "MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss",
    "clip_grad_norm_", "clip_grad_value_", "total_grad_norm", "l1_penalty", "l2_penalty", "weights_only",
    "gradient_norms", "gradient_health", "gradcheck", "GradcheckError",
    "manual_seed", "cupy_available", "get_array_module", "to_device", "to_numpy",
    "callbacks", "datasets", "schedules", "save_checkpoint", "load_checkpoint", "CheckpointError",
    "ArrayDataset", "DataLoader", "Trainer",
]
