"""The training strategy: the one contract between the Trainer and a layout (one process, data parallel, pipeline, grid)."""
from __future__ import annotations

from typing import Any, Iterator, Protocol

from mpiprop.network.backend import Array
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.losses import Loss
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.training.ranks import Ranks


class TrainingStrategy(Protocol):
    """What the Trainer needs of a layout; `LocalStrategy`, `DataParallel` and `Pipeline` implement it.

    Attributes:
        ranks: the layout's processes (see `Ranks`): who prints and writes, which data shard,
            gathering values, joining and cutting whole-model dicts.
        last_output: the last `train_step`'s output where this rank reports it (None elsewhere:
            a pipeline reports it on one rank of its last stage, so each sample counts once).
    """

    ranks: Ranks
    last_output: Array | None

    def train_step(self, x: Array, y: Array, loss_fn: Loss) -> float:
        """Forward, loss and backward of one batch, gradients in sync; returns this rank's loss.

        A non-finite output or loss must give NaN gradients (see `loss_and_output_gradient`),
        so that every rank synchronising gradients with this one sees them."""

    def predict(self, x: Array) -> Array | None:
        """The model's output for `x` where this rank reports it, else None; collective."""

    def parameters(self) -> list[Parameter]:
        """This rank's parameters (the optimizer's)."""

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """This rank's parameters under their whole-model names."""

    def train(self, mode: bool = True) -> Any:
        """Training mode (collective where modes share state, e.g. buffers)."""

    def eval(self) -> Any:
        """Evaluation mode."""

    def state_dict(self) -> dict[str, Array]:
        """Copies of the state this rank holds, under whole-model names."""

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Load this rank's entries of a whole-model state dict."""

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every entry of the whole model's state dict."""

    def locate_non_finite(self, x: Array) -> str:
        """Where a forward pass of `x` first yields NaN or Inf (collective over a pipeline's stages)."""


def protocol_members(protocol: type) -> list[str]:
    """The members a `typing.Protocol` declares: its own methods, then its annotated attributes."""
    names = [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]
    return list(dict.fromkeys(names + list(getattr(protocol, "__annotations__", {}))))


def missing_members(candidate: Any, protocol: type) -> list[str]:
    """The members of `protocol` that `candidate` lacks (a method that is not callable counts as lacking)."""
    methods = {name for name, value in vars(protocol).items() if callable(value)}
    return [name for name in protocol_members(protocol)
            if not hasattr(candidate, name) or (name in methods and not callable(getattr(candidate, name)))]


def as_strategy(model: Any) -> TrainingStrategy:
    """A Layer trained in this process gets a LocalStrategy; a strategy is checked against the contract.

    Raises:
        TypeError: for anything else, naming the members of `TrainingStrategy` or `Ranks` it lacks.
    """
    if isinstance(model, Layer):
        from mpiprop.network.training.local_strategy import LocalStrategy
        return LocalStrategy(model)
    missing = missing_members(model, TrainingStrategy)
    if not missing:
        missing = [f"ranks.{name}" for name in missing_members(model.ranks, Ranks)]
    if missing:
        raise TypeError(f"the Trainer trains a network Layer or a training strategy (LocalStrategy, DataParallel, "
                        f"Pipeline; see network.training.strategy.TrainingStrategy), but a {type(model).__name__} "
                        f"lacks {missing}")
    return model
