"""network: explicit, layer-by-layer backpropagation on numpy and cupy."""
from mpiprop.network import optim
from mpiprop.network.layers import init
from mpiprop.network.layers.activations import ELU, GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from mpiprop.network.backend import cupy_available, get_array_module, to_device, to_numpy
from mpiprop.network.layers.batchnorm import BatchNorm1d
from mpiprop.network.optim.clipping import clip_grad_norm_, clip_grad_value_, total_grad_norm
from mpiprop.network.training.diagnostics import gradient_health, gradient_norms
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.flatten import Flatten
from mpiprop.network.layers.gradcheck import GradcheckError, gradcheck
from mpiprop.network.optim.grad_scaler import GradScaler
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.linear import Linear
from mpiprop.network.layers.bce_with_logits import BCEWithLogitsLoss
from mpiprop.network.layers.cross_entropy import CrossEntropyLoss
from mpiprop.network.layers.losses import Loss
from mpiprop.network.layers.mse import MSELoss
from mpiprop.network.training.memory_report import MemoryReport, PeakMemory, memory_report, memory_table
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.compute.precision import PRECISIONS, Precision, using_precision
from mpiprop.network.optim.regularization import l1_penalty, l2_penalty, weights_only
from mpiprop.network.layers.recompute import Recompute
from mpiprop.network.compute.rng import manual_seed
from mpiprop.network.layers.sequential import Sequential
from mpiprop.network.data import datasets
from mpiprop.network.compute import rng
from mpiprop.network.optim import lr_schedules
from mpiprop.network.training import callbacks
from mpiprop.network.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.training.local_strategy import LocalStrategy
from mpiprop.network.training.trainer import Trainer
from mpiprop.network.layers.conv import Conv1d, Conv2d
from mpiprop.network.layers.pooling import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d,
                                            MaxPool1d, MaxPool2d)
from mpiprop.network.layers.batchnorm2d import BatchNorm2d
from mpiprop.network.layers.embedding import Embedding
from mpiprop.network.layers.layernorm import LayerNorm
from mpiprop.network.layers.residual import Residual
from mpiprop.network.layers.tied_head import TiedLinear
from mpiprop.network import models
from mpiprop.network.models.gpt import gpt
from mpiprop.network.layers.attention import CausalSelfAttention

# the learning-rate schedules' earlier name, kept so that existing scripts run unchanged
schedules = lr_schedules

__all__ = [
    "init", "optim", "rng",
    "Layer", "Parameter", "Sequential", "Recompute", "Linear", "Flatten", "Dropout", "BatchNorm1d",
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ELU", "GELU", "Softmax",
    "Loss", "MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss",
    "clip_grad_norm_", "clip_grad_value_", "total_grad_norm", "l1_penalty", "l2_penalty", "weights_only",
    "gradient_norms", "gradient_health", "gradcheck", "GradcheckError",
    "GradScaler", "Precision", "PRECISIONS", "using_precision",
    "MemoryReport", "PeakMemory", "memory_report", "memory_table",
    "manual_seed", "cupy_available", "get_array_module", "to_device", "to_numpy",
    "callbacks", "datasets", "lr_schedules", "schedules", "save_checkpoint", "load_checkpoint", "CheckpointError",
    "ArrayDataset", "DataLoader", "Trainer", "LocalStrategy",
    "Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
    "BatchNorm2d",
]
__all__ += ["Embedding", "LayerNorm", "Residual", "TiedLinear"]
__all__ += ["models", "gpt", "CausalSelfAttention"]

from mpiprop.network.version import __version__  # noqa: E402
