"""LocalStrategy: the training-step contract for a model trained in this process alone."""
from __future__ import annotations

import math
from typing import Any, Iterator

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.losses import Loss
from mpiprop.network.training.non_finite import first_non_finite_layer, is_finite
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


class LocalStrategy:
    """One process trains the whole `module`; the reference every distributed strategy agrees with.

    The contract the Trainer talks to (DataParallel and Pipeline implement it too)::

        loss = strategy.train_step(x, y, loss_fn)   # forward, backward, gradients in sync
        strategy.parameters(), named_parameters(), train(), eval(), predict(x)
        strategy.state_dict() / load_state_dict(state)   # the model's full parameter names
        strategy.state_shapes()                          # every entry of the whole model's state
        strategy.last_output                             # the last step's output where it is known

    plus what a trainer needs to combine results over processes: `comm` (None here),
    `data_shard` (which shard of the data this process reads), `is_main` (who prints and
    writes files), `position` (where this process sits, for messages), `stage_allgather`
    (one value from every process holding a part of this copy of the model), `merge_over_stages`
    (whole-model dicts from those parts), `local_part` (the inverse: this process's part of a
    whole-model dict), `parameters_counted_once` (for sums over the whole model, such as the
    gradient norm), `locate_non_finite` and `check_agreement` (settings every process must share).

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
        self.comm: Any = None
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

    def train(self, mode: bool = True) -> "LocalStrategy":
        self.module.train(mode)
        return self

    def eval(self) -> "LocalStrategy":
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

    def local_part(self, named: dict[str, Any]) -> dict[str, Any]:
        """This process's part of `named`, whole-model values keyed by parameter name (e.g. a checkpoint's
        optimizer state): here all of it; tensor-parallel ranks cut their shares."""
        return named

    def parameters_counted_once(self) -> list[Parameter]:
        """The parameters whose gradients this process adds to sums over the whole model, such as the
        gradient norm: here all of them; processes that hold a parameter alike count it on one of them."""
        return self.parameters()

    # --- what a trainer combines over processes -----------------------------------------------
    @property
    def data_shard(self) -> tuple[int, int]:
        """(index, count): this process reads shard `index` of `count` of every batch."""
        return 0, 1

    @property
    def is_main(self) -> bool:
        """Whether this process prints and writes files."""
        return True

    @property
    def position(self) -> str:
        """Where this process sits, for messages ("rank 1 (stage 1 of 2, replica 0)")."""
        return "rank 0"

    def check_agreement(self, owner: str, settings: dict[str, Any]) -> None:
        """Raise on every process unless all of them passed equal `settings` (here: one process, nothing to compare).

        Collective in a distributed strategy, which compares a small description of each value (scalars,
        an optimizer's class and hyperparameters, a schedule's values, an object's public settings).

        Args:
            owner: what the settings configure, for the message (e.g. "Trainer").
            settings: name -> this process's value.

        Raises:
            ValueError: on every process, naming the first setting that differs and each process's value.
        """

    def stage_allgather(self, value: Any) -> list[Any]:
        """`value` from every process holding a part of this copy of the model, in stage order (here: one)."""
        return [value]

    def merge_over_stages(self, part: dict[str, Any]) -> dict[str, Any] | None:
        """The union of the stages' `part` dicts on the main process (None elsewhere); collective."""
        return dict(part)

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
