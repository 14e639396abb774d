"""WholeModelStrategy: the training step of a layout whose every process holds the whole model."""
from __future__ import annotations

import math
from typing import Iterator

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.losses import Loss
from mpiprop.network.training.non_finite import first_non_finite_layer, is_finite
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


class WholeModelStrategy:
    """The training step of a layout whose every process holds the whole `module`.

    It is the model's half of `TrainingStrategy` (train_step, predict, parameters, state);
    a layout adds what it is about ranks: its `ranks` (see `Ranks`), and its own gradient
    synchronisation in `backward`. `LocalStrategy` (one process) and `DataParallel` build on it.

    Args:
        module: the model, usually a Sequential.

    Raises:
        TypeError: when `module` is not a network Layer.
    """

    def __init__(self, module: Layer):
        if not isinstance(module, Layer):
            raise TypeError(f"{type(self).__name__} trains a network Layer (e.g. a Sequential), "
                            f"got {type(module).__name__}")
        self.module = module
        self.last_output: Array | None = None

    # --- the training step ------------------------------------------------------------------
    def train_step(self, x: Array, y: Array, loss_fn: Loss) -> float:
        """Forward `x`, the loss against `y`, and backward; gradients are added to each `.grad`.

        A NaN or Inf output or loss (the loss is not computed on a non-finite output: NaN)
        sends a NaN gradient backward, so every process that averages gradients with this one
        sees NaN gradients too and they all skip the step alike.

        Args:
            x: the input batch (this process's shard of it).
            y: the targets.
            loss_fn: a mean-reducing loss, e.g. `CrossEntropyLoss()`.

        Returns:
            The batch's mean loss on this process.
        """
        output = self(x)
        loss, output_grad = loss_and_output_gradient(loss_fn, output, y)
        self.backward(output_grad)
        self.last_output = output
        return loss

    def __call__(self, x: Array) -> Array:
        return self.module(x)

    def backward(self, dout: Array) -> None:
        """Backward of the last `strategy(x)`: parameter gradients only."""
        if isinstance(self.module, Sequential):
            self.module.backward(dout, input_grad=False)
        else:
            self.module.backward(dout)

    def predict(self, x: Array) -> Array:
        """The model's output for `x` (in the current mode; call `eval()` first for inference)."""
        return self.module.forward(x)[0]

    # --- parameters and state ---------------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        return self.module.parameters()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        return self.module.named_parameters(prefix)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        return self.module.named_buffers(prefix)

    @property
    def training(self) -> bool:
        return self.module.training

    def train(self, mode: bool = True) -> "WholeModelStrategy":
        self.module.train(mode)
        return self

    def eval(self) -> "WholeModelStrategy":
        return self.train(False)

    def zero_grad(self) -> None:
        self.module.zero_grad()

    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameters and buffers this process holds, under the model's full names."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Load the entries of a whole-model state dict (from any layout) that this process holds.

        Raises:
            KeyError: when an entry is missing or unexpected.
            ValueError: when a shape differs.
        """
        self.module.load_state_dict(state)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every entry of the whole model's state dict."""
        return {name: tuple(array.shape) for name, array in self.module.state_dict().items()}

    def locate_non_finite(self, x: Array) -> str:
        """Where a forward pass of `x` first yields NaN or Inf, e.g. "layer 3 (Linear(128, 10))"."""
        return first_non_finite_layer(self.module, x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n  module={self.module!r})"


def loss_and_output_gradient(loss_fn: Loss, output: Array, y: Array) -> tuple[float, Array]:
    """The loss and its gradient; for a non-finite output or loss, NaN and a NaN gradient.

    Args:
        loss_fn: a mean-reducing loss.
        output: the model's output.
        y: the targets.
    """
    if is_finite(output):
        loss = loss_fn(output, y)
        if math.isfinite(loss):
            return loss, loss_fn.backward()
    return math.nan, get_array_module(output).full_like(output, math.nan)
