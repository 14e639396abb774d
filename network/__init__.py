"""network: explicit, layer-by-layer backpropagation on numpy and cupy."""
from mpiprop.network import init, optim
from mpiprop.network.activations import ELU, GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from mpiprop.network.backend import cupy_available, get_array_module, to_device, to_numpy
from mpiprop.network.batchnorm import BatchNorm1d
from mpiprop.network.clipping import clip_grad_norm_, clip_grad_value_, total_grad_norm
from mpiprop.network.diagnostics import gradient_health, gradient_norms
from mpiprop.network.dropout import Dropout
from mpiprop.network.flatten import Flatten
from mpiprop.network.gradcheck import GradcheckError, gradcheck
from mpiprop.network.grad_scaler import GradScaler
from mpiprop.network.layer import Layer
from mpiprop.network.linear import Linear
from mpiprop.network.losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from mpiprop.network.memory_report import MemoryReport, PeakMemory, memory_report, memory_table
from mpiprop.network.parameter import Parameter
from mpiprop.network.precision import PRECISIONS, Precision, using_precision
from mpiprop.network.regularization import l1_penalty, l2_penalty, weights_only
from mpiprop.network.recompute import Recompute
from mpiprop.network.rng import manual_seed
from mpiprop.network.sequential import Sequential
from mpiprop.network import callbacks, datasets, schedules
from mpiprop.network.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mpiprop.network.data import ArrayDataset, DataLoader
from mpiprop.network.local_strategy import LocalStrategy
from mpiprop.network.trainer import Trainer

__all__ = [
    "init", "optim",
    "Layer", "Parameter", "Sequential", "Recompute", "Linear", "Flatten", "Dropout", "BatchNorm1d",
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ELU", "GELU", "Softmax",
    "Loss", "MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss",
    "clip_grad_norm_", "clip_grad_value_", "total_grad_norm", "l1_penalty", "l2_penalty", "weights_only",
    "gradient_norms", "gradient_health", "gradcheck", "GradcheckError",
    "GradScaler", "Precision", "PRECISIONS", "using_precision",
    "MemoryReport", "PeakMemory", "memory_report", "memory_table",
    "manual_seed", "cupy_available", "get_array_module", "to_device", "to_numpy",
    "callbacks", "datasets", "schedules", "save_checkpoint", "load_checkpoint", "CheckpointError",
    "ArrayDataset", "DataLoader", "Trainer", "LocalStrategy",
]
