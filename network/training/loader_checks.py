"""Checks of the loaders given to the Trainer, and the loader settings a resumed run must share."""
from __future__ import annotations

from typing import Any

from mpiprop.network.training.strategy import TrainingStrategy

LOADER_SETTINGS = ("shuffle", "drop_last", "seed", "uneven")


def check_loader(loader: Any, name: str, strategy: TrainingStrategy, allow_empty: bool = False) -> None:
    """Raise unless `loader` yields batches of this rank's shard (and, for training, some, on every rank alike).

    Raises:
        TypeError: when it is not a loader.
        ValueError: for a loader sharded for another rank, empty, or uneven over ranks in training.
    """
    if not hasattr(loader, "batches") or not hasattr(loader, "__len__"):
        raise TypeError(f"{name} must be a network.data.DataLoader (with batches() and len()), "
                        f"got {type(loader).__name__}")
    ranks = strategy.ranks
    shard, shards = ranks.data_shard
    for attribute, expected in (("rank", shard), ("world_size", shards)):
        value = getattr(loader, attribute, None)
        if value is not None and value != expected:
            raise ValueError(f"{name} is sharded with {attribute}={value} but the trainer's {type(strategy).__name__} "
                             f"reads shard {shard} of {shards}; build the loader with rank={shard}, "
                             f"world_size={shards}")
    if not allow_empty and ranks.size > 1 and uneven_shards(loader):
        raise ValueError(f"{name} shards {len(loader.dataset)} samples over {ranks.size} ranks with "
                         "uneven='keep', so the ranks would train on different numbers of samples and steps "
                         "and wait for each other forever; use uneven='pad' or 'drop' for training "
                         "('keep' suits evaluation)")
    if not allow_empty and len(loader) == 0:
        raise ValueError(f"{name} yields no batches on rank {ranks.rank}: {loader!r}; "
                         "lower batch_size or set drop_last=False")


def uneven_shards(loader: Any) -> bool:
    """True for a loader whose ranks get different numbers of samples (uneven='keep' on an uneven dataset)."""
    dataset = getattr(loader, "dataset", None)
    return getattr(loader, "uneven", None) == "keep" and dataset is not None and len(dataset) % loader.world_size != 0


def global_loader_settings(loader: Any) -> dict[str, Any]:
    """What must match for a run to resume inside an epoch: the order and the batch over all ranks."""
    settings = {key: getattr(loader, key, None) for key in LOADER_SETTINGS}
    batch_size, shards = getattr(loader, "batch_size", None), getattr(loader, "world_size", 1)
    settings["global_batch_size"] = None if batch_size is None else batch_size * shards
    return settings
