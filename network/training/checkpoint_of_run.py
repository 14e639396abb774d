"""A training run's checkpoint: written once from every rank's parts, resumed in any layout."""
from __future__ import annotations

from typing import Any, Sequence

from mpiprop.network.backend import to_numpy
from mpiprop.network.compute import rng
from mpiprop.network.training.callbacks import Callback
from mpiprop.network.training.checkpoint import (CheckpointError, check_model_state, load_optimizer_state,
                                                 merged_optimizer_state, named_optimizer_state,
                                                 optimizer_parameter_names, read_checkpoint, write_checkpoint)
from mpiprop.network.training.run_state import RunState
from mpiprop.network.training.shares import join_parts
from mpiprop.network.training.strategy import TrainingStrategy


def save_run(path: str, strategy: TrainingStrategy, optimizer: Any, state: RunState, callbacks: Sequence[Callback],
             grad_scaler: Any = None) -> None:
    """Write the run to `path` from the main rank; collective over the strategy's ranks.

    The model, the optimizer state and every mapping by parameter name in a callback's state
    (early stopping's best weights) are joined over the ranks holding parts of the model and
    stored once, whatever the number of ranks; each rank adds its random state and metric sums.
    """
    ranks = strategy.ranks
    everyone = ranks.gather((rng.get_rng_state(), state.train_totals.state_dict(), list(ranks.data_shard)))
    model_state = ranks.join({name: to_numpy(array) for name, array in strategy.state_dict().items()})
    named = named_optimizer_state(optimizer.state_dict(), optimizer_names(strategy, optimizer))
    optimizer_state = merged_optimizer_state(named, ranks.join)
    callback_states = [joined_mappings(callback.state_dict(), ranks.join) for callback in callbacks]
    if ranks.is_main:
        meta = state.to_meta([sums for _, sums, _ in everyone],
                             [r for r, _, _ in everyone] if ranks.size > 1 else None,
                             [type(c).__name__ for c in callbacks], callback_states,
                             None if grad_scaler is None else grad_scaler.state_dict())
        meta["rank_shards"] = [shard for _, _, shard in everyone]
        write_checkpoint(path, model_state, optimizer_state, trainer=meta)


def joined_mappings(callback_state: dict[str, Any], join: Any) -> dict[str, Any] | None:
    """`callback_state` with each dict in it joined by `join` (collective), on the main rank; None elsewhere."""
    joined = {key: join(value) if isinstance(value, dict) else value for key, value in callback_state.items()}
    return None if any(isinstance(value, dict) and joined[key] is None for key, value in callback_state.items()) \
        else joined


def resume_run(path: str, strategy: TrainingStrategy, optimizer: Any, state: RunState, callbacks: Sequence[Callback],
               grad_scaler: Any = None, scheduled_lr: bool = False) -> dict[str, Any]:
    """Restore the run saved at `path` into the strategy, optimizer, random state, `state`, callbacks and scaler.

    Returns:
        The checkpoint's trainer meta.

    Raises:
        CheckpointError: when the file does not fit the model, optimizer, callbacks or loader.
    """
    saved = read_checkpoint(path, strategy)
    meta = saved["meta"].get("trainer")
    if meta is None:
        raise CheckpointError(f"checkpoint {path} was not written by a Trainer (its meta has no 'trainer' "
                              "entry); load it with mpiprop.network.load_checkpoint instead")
    check_hyperparameters(path, saved["optimizer"], optimizer, scheduled_lr)
    check_callbacks_and_loader(path, meta, callbacks, state.loader_settings)
    check_model_state(path, saved["model"], strategy.state_shapes())
    load_optimizer_state(path, local_optimizer_state(saved["optimizer"], strategy), optimizer,
                         optimizer_names(strategy, optimizer))
    strategy.load_state_dict(saved["model"])
    ranks = strategy.ranks
    rng.set_rng_state(saved_random_state(meta, ranks, saved["rng"]))
    for callback, callback_state in zip(callbacks, callback_states(meta, strategy.state_shapes())):
        callback.load_state_dict(callback_state)
    state.load_meta(meta, ranks.rank, ranks.size, ranks.is_main)
    if grad_scaler is not None and meta.get("grad_scaler") is not None:
        grad_scaler.load_state_dict(meta["grad_scaler"])
    return meta


def saved_random_state(meta: dict[str, Any], ranks: Any, main_rank_state: dict) -> dict:
    """The random state a rank goes on from: that of the first saved rank that read the same data shard (ranks
    reading one shard, such as a stage's tensor ranks, must draw alike), else of the saved rank numbered as this
    rank's shard; for checkpoints without shards, the saved rank of this rank's number in the same number of ranks."""
    rank_rng, shards = meta.get("rank_rng"), meta.get("rank_shards")
    if rank_rng is None:
        return main_rank_state
    if shards is None:
        return rank_rng[ranks.rank] if len(rank_rng) == ranks.size else main_rank_state
    mine = list(ranks.data_shard)
    same = [index for index, shard in enumerate(shards) if list(shard) == mine]
    if same:
        return rank_rng[same[0]]
    return rank_rng[mine[0]] if mine[0] < len(rank_rng) else main_rank_state


def check_callbacks_and_loader(path: str, meta: dict[str, Any], callbacks: Sequence[Callback],
                               loader_settings: dict[str, Any]) -> None:
    """Raise unless the run has the callbacks it was saved with, and, inside an epoch, the same loader settings."""
    saved_types = [entry["type"] for entry in meta["callbacks"]]
    types = [type(c).__name__ for c in callbacks]
    if saved_types != types:
        raise CheckpointError(f"checkpoint {path} holds the state of callbacks {saved_types} but this trainer "
                              f"has {types}; pass the same callbacks to resume")
    if meta["batch"] and meta["loader"] != loader_settings:
        raise CheckpointError(f"checkpoint {path} stopped inside an epoch of a loader with {meta['loader']} "
                              f"but this loader has {loader_settings}; use the same loader settings "
                              "(the same batch over all ranks)")


def callback_states(meta: dict[str, Any], whole_shapes: dict[str, tuple[int, ...]]) -> list[dict[str, Any]]:
    """Each callback's saved state, its mappings by parameter name whole (files that kept one state per rank
    have them joined over the ranks)."""
    rank_callbacks = meta.get("rank_callbacks")
    if rank_callbacks is None:
        return [entry["state"] for entry in meta["callbacks"]]
    return [joined_over_ranks([states[index] for states in rank_callbacks], whole_shapes)
            for index in range(len(meta["callbacks"]))]


def joined_over_ranks(states: list[dict[str, Any]], whole_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Rank 0's state, each of whose dict values is the union of that dict on every rank (see `join_parts`)."""
    joined = dict(states[0])
    for key, value in joined.items():
        if isinstance(value, dict):
            joined[key] = join_parts([state[key] or {} for state in states], whole_shapes)
    return joined


def local_optimizer_state(saved: dict[str, Any] | None, strategy: TrainingStrategy) -> dict[str, Any] | None:
    """A checkpoint's optimizer state with its entries by name cut to this rank's parts."""
    if saved is None or not isinstance(saved.get("state"), dict):
        return saved
    return {**saved, "state": strategy.ranks.cut(saved["state"])}


def optimizer_names(strategy: TrainingStrategy, optimizer: Any) -> list[str]:
    """The full name of each of the optimizer's parameters.

    Raises:
        ValueError: when the optimizer holds parameters the strategy does not.
    """
    names = optimizer_parameter_names(strategy, optimizer)
    if names is None:
        raise ValueError("the optimizer holds parameters that the trained model does not; build it from "
                         "the strategy's parameters(), e.g. nn.optim.SGD(pipe.parameters(), lr=0.1)")
    return names


def check_hyperparameters(path: str, saved_optimizer: dict[str, Any] | None, optimizer: Any,
                          scheduled_lr: bool) -> None:
    """A resumed run goes on with the hyperparameters it stopped with, in every parameter group; a changed
    one is an error (the learning rate excepted when a schedule sets it)."""
    if saved_optimizer is None:
        return
    ours = optimizer.state_dict()["param_groups"]
    theirs = saved_optimizer.get("param_groups") or [saved_optimizer.get("hyperparameters", {})]
    ignored = {"params", "lr"} if scheduled_lr else {"params"}
    changed = [(index, name, _plain(saved.get(name)), _plain(value))
               for index, (group, saved) in enumerate(zip(ours, theirs)) for name, value in group.items()
               if name not in ignored and _plain(saved.get(name)) != _plain(value)]
    if changed:
        where = (lambda index: f" in group {index}") if len(ours) > 1 else (lambda index: "")
        described = ", ".join(f"{name}={saved!r}{where(index)} in the checkpoint but {now!r} now"
                              for index, name, saved, now in changed)
        raise CheckpointError(f"checkpoint {path} was trained with other hyperparameters: {described}; "
                              "resume with the same ones, or start a new run from its weights with "
                              "mpiprop.network.load_checkpoint(path, model)")


def _plain(value: Any) -> Any:
    """A hyperparameter as a comparable Python value (tuples and numpy scalars from a file become lists, floats)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.item() if hasattr(value, "item") else value
