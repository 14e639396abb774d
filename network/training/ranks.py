"""Ranks: what a training strategy tells the Trainer about the processes it runs on, and the one rank it runs here."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from mpiprop.network.layers.parameter import Parameter


class Ranks(Protocol):
    """The processes of one training layout, as the Trainer sees them; every layout provides one.

    Every call named collective must be made by every rank of the layout together, in the
    same order; the Trainer makes each of them on every rank alike.

    Attributes:
        rank: this process's index among the layout's ranks (0 for one process).
        size: the number of ranks of the layout.
        is_main: whether this rank prints and writes files (one rank of the layout).
        data_shard: (index, count): this rank reads shard `index` of `count` of every batch.
        position: where this rank sits, for messages ("rank 1 (stage 1 of 2, replica 0)").
    """

    rank: int
    size: int
    is_main: bool
    data_shard: tuple[int, int]
    position: str

    def gather(self, value: Any) -> list[Any]:
        """`value` from every rank of the layout, in rank order, on every rank; collective."""

    def gather_model(self, value: Any) -> list[Any]:
        """`value` from every rank holding a part of this rank's copy of the model or of its synchronised
        gradients (pipeline stages, tensor ranks, ZeRO-2's gradient shards), in stage order; collective."""

    def join(self, part: dict[str, Any]) -> dict[str, Any] | None:
        """The whole-model dict (keyed by parameter name) from the parts that `gather_model`'s ranks hold,
        shares joined into whole arrays, on the main rank; None elsewhere; collective."""

    def cut(self, whole: dict[str, Any]) -> dict[str, Any]:
        """This rank's part of a whole-model dict keyed by parameter name (its shares of split arrays)."""

    def counted_once(self, named: Iterable[tuple[str, Parameter]]) -> list[Parameter]:
        """Of this rank's named parameters, those it adds to sums over the whole model (the gradient norm);
        a parameter that several ranks of one copy hold alike counts on one of them."""

    def max_later(self, value: int) -> Callable[[], int]:
        """Start the maximum of `value` over every rank; the returned call waits for it; collective."""


class OneProcess:
    """The ranks of a layout that runs in this process alone: every answer is this process's own."""

    rank, size, is_main, data_shard, position = 0, 1, True, (0, 1), "rank 0"

    def gather(self, value: Any) -> list[Any]:
        return [value]

    def gather_model(self, value: Any) -> list[Any]:
        return [value]

    def join(self, part: dict[str, Any]) -> dict[str, Any] | None:
        return dict(part)

    def cut(self, whole: dict[str, Any]) -> dict[str, Any]:
        return whole

    def counted_once(self, named: Iterable[tuple[str, Parameter]]) -> list[Parameter]:
        return [p for _, p in named]

    def max_later(self, value: int) -> Callable[[], int]:
        return lambda: value

    def check_agreement(self, owner: str, settings: dict[str, Any]) -> None:
        """Raise on every rank unless all passed equal `settings` (here: one process, nothing to compare).

        A layout over several ranks compares, collectively, a small description of each value (scalars,
        an optimizer's class and hyperparameters, a schedule's values, an object's public settings).

        Args:
            owner: what the settings configure, for the message (e.g. "Trainer").
            settings: name -> this rank's value.

        Raises:
            ValueError: on every rank, naming the first setting that differs and each rank's value.
        """

    def __repr__(self) -> str:
        return "OneProcess()"


def check_ranks_agree(ranks: Ranks, what: str, mine: dict[str, Any]) -> None:
    """Raise on every rank when the ranks' `mine` differ; collective.

    Raises:
        ValueError: naming rank 0's values and those of the first rank that differs.
    """
    everyone = ranks.gather(mine)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            raise ValueError(f"the ranks disagree on the trainer's {what}: rank 0 has {everyone[0]} but rank "
                             f"{rank} has {theirs}; every rank must run the same script with the same "
                             "arguments and read the same checkpoint file")
