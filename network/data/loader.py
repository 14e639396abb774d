"""Datasets over arrays and a seeded, shardable mini-batch loader."""
from __future__ import annotations

from typing import Any, Iterator

import numpy

from mpiprop.network.checks import non_negative_int, positive_int

UNEVEN_POLICIES = ("pad", "drop", "keep")


class ArrayDataset:
    """Equal-length arrays indexed together along their first axis, e.g. `ArrayDataset(x, y)`.

    Args:
        *arrays: one or more numpy arrays with the same number of rows.

    Raises:
        ValueError: when no array is given, one is a scalar, or the row counts differ.
    """

    def __init__(self, *arrays: numpy.ndarray):
        if not arrays:
            raise ValueError("ArrayDataset needs at least one array, e.g. ArrayDataset(x, y)")
        arrays = tuple(_as_array(a, index) for index, a in enumerate(arrays))
        for index, array in enumerate(arrays):
            if array.ndim == 0:
                raise ValueError(f"ArrayDataset array {index} is a scalar; every array needs a first (sample) axis")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"ArrayDataset arrays have different numbers of samples {lengths}; they must all match")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, indices: Any) -> tuple[numpy.ndarray, ...]:
        return tuple(a[indices] for a in self.arrays)


def _as_array(array: Any, index: int) -> numpy.ndarray:
    try:
        return numpy.asarray(array)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"ArrayDataset array {index} cannot become a numpy array ({error}); "
                         "give arrays of equal-length rows") from None


def epoch_order(num_samples: int, epoch: int, seed: int, shuffle: bool) -> numpy.ndarray:
    """The order of all sample indices in `epoch`: a permutation seeded by (seed, epoch), or 0..n-1.

    A pure function of its arguments, so every rank computes the same order without communicating.

    Raises:
        ValueError: when num_samples, epoch or seed is not a non-negative integer.
    """
    num_samples = non_negative_int(num_samples, "num_samples")
    epoch, seed = non_negative_int(epoch, "epoch"), non_negative_int(seed, "seed")
    if not shuffle:
        return numpy.arange(num_samples)
    return numpy.random.default_rng((seed, epoch)).permutation(num_samples)


def shard(order: numpy.ndarray, rank: int, world_size: int, uneven: str = "pad") -> numpy.ndarray:
    """The part of `order` that `rank` of `world_size` processes: every `world_size`-th index from `rank`.

    Policies for a length n that `world_size` does not divide:
      - "pad": wrap around to the start of `order` until the length is a multiple of
        `world_size`; every rank gets ceil(n / world_size) indices, so the first
        (-n mod world_size) indices of the order appear twice in the epoch.
      - "drop": leave out the last (n mod world_size) indices of the order; every rank gets
        floor(n / world_size) and each index appears at most once.
      - "keep": no change; ranks get floor or ceil(n / world_size) indices, disjoint and
        covering. Only for evaluation: ranks may run different numbers of batches.

    Raises:
        ValueError: for an unknown policy, a rank outside [0, world_size), an order that is not
            one-dimensional, or "pad" of nothing.
    """
    world_size = positive_int(world_size, "world_size")
    if isinstance(rank, bool) or not isinstance(rank, (int, numpy.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
    if not isinstance(uneven, str) or uneven not in UNEVEN_POLICIES:
        raise ValueError(f"uneven must be one of {UNEVEN_POLICIES}, got {uneven!r}")
    order = numpy.asarray(order)
    if order.ndim != 1:
        raise ValueError(f"order must be a one-dimensional array of sample indices, got shape {order.shape}")
    n = len(order)
    if uneven == "pad" and n % world_size:
        if n == 0:
            raise ValueError("cannot pad an empty order")
        return order[_wrapped_positions(n, int(rank), world_size)]
    if uneven == "drop":
        order = order[: n - n % world_size]
    return order[rank::world_size]


def _wrapped_positions(n: int, rank: int, world_size: int) -> numpy.ndarray:
    """Positions rank, rank + world_size, ... (mod n) in an order of length n repeated to a multiple of world_size.

    Never builds the repeated order, which has world_size entries when world_size exceeds n.
    """
    count = -(-n // world_size)
    return (rank % n + numpy.arange(count) * (world_size % n)) % n


class DataLoader:
    """Mini-batches of an `ArrayDataset`, reshuffled each epoch and sharded over ranks.

    The epoch's order depends only on (seed, epoch) (see `epoch_order`), so a resumed run and
    every rank reproduce it. Rank r takes every world_size-th sample of that order (see `shard`
    for the `uneven` policies), so batch b of all ranks together is batch b of a single-process
    loader with batch_size * world_size (for n divisible by batch_size * world_size).
    With "pad" or "drop", every rank runs the same number of batches per epoch, as
    gradient averaging needs.

    Args:
        dataset: the samples.
        batch_size: samples per batch on this rank.
        shuffle: draw a new permutation each epoch.
        drop_last: skip this rank's last batch when it is smaller than batch_size.
        seed: seed of the permutations; must be equal on every rank.
        rank: this process's rank.
        world_size: number of ranks sharing the data.
        uneven: "pad" (default), "drop" or "keep", see `shard`.

    Raises:
        ValueError/TypeError: for invalid arguments, with the value and the fix.
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, uneven: str = "pad"):
        if not isinstance(dataset, ArrayDataset):
            raise TypeError(f"DataLoader needs an ArrayDataset, got {type(dataset).__name__}; "
                            "wrap arrays with ArrayDataset(x, y)")
        if len(dataset) == 0:
            raise ValueError("DataLoader got an empty dataset")
        self.seed = non_negative_int(seed, "DataLoader seed")
        self.dataset = dataset
        self.batch_size = positive_int(batch_size, "DataLoader batch_size")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size, self.uneven = rank, world_size, uneven
        shard(numpy.arange(len(dataset)), rank, world_size, uneven)  # validates rank, world_size, uneven
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that `iter(loader)` goes through (its permutation)."""
        self.epoch = non_negative_int(epoch, "epoch")

    def indices(self, epoch: int) -> numpy.ndarray:
        """This rank's sample indices in `epoch`, in the order they are batched."""
        order = epoch_order(len(self.dataset), epoch, self.seed, self.shuffle)
        return shard(order, self.rank, self.world_size, self.uneven)

    def shard_size(self) -> int:
        """Samples this rank gets per epoch (before drop_last)."""
        n, size = len(self.dataset), self.world_size
        if self.uneven == "pad":
            return -(-n // size)
        if self.uneven == "drop":
            return n // size
        return n // size + (self.rank < n % size)

    def __len__(self) -> int:
        size = self.shard_size()
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[numpy.ndarray, ...]]:
        """The batches of `epoch` from batch number `start` on (to resume mid-epoch).

        Raises:
            ValueError: when epoch or start is not a non-negative integer.
        """
        start = non_negative_int(start, "start (batch number)")
        return self._batches_of(self.indices(epoch), start)

    def _batches_of(self, indices: numpy.ndarray, start: int) -> Iterator[tuple[numpy.ndarray, ...]]:
        for number in range(start, len(self)):
            yield self.dataset[indices[number * self.batch_size:(number + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[tuple[numpy.ndarray, ...]]:
        return self.batches(self.epoch)

    def __repr__(self) -> str:
        return (f"DataLoader(samples={len(self.dataset)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed}, rank={self.rank}, world_size={self.world_size}, "
                f"uneven={self.uneven!r})")
