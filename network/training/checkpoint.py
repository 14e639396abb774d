"""Checkpoints: model, optimizer and RNG state plus metadata in one .npz file, written atomically, read without pickle.

The file is a numpy .npz archive: every array is an entry named by its place in the
state ("model/0.weight", "optimizer/state/0.weight/exp_avg", ...) and the entry "__checkpoint__"
holds JSON describing the whole structure (numbers, strings, lists, dicts, tuples) with
references to those arrays. Zip CRCs catch corrupted bytes; nothing is unpickled. Model and optimizer state are keyed
by the model's full parameter names, so a checkpoint written in one layout (one process,
data parallel, a pipeline) loads in any other.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy

from mpiprop.network.compute import rng
from mpiprop.network.backend import is_array, to_numpy
from mpiprop.network.training.checkpoint_archive import ArchiveRefused, read_members
from mpiprop.network.training.checkpoint_writing import write_atomically
from mpiprop.network.checks import DAMAGED_NPZ_ERRORS

FORMAT = "mpiprop-checkpoint"
VERSION = 1
HEADER_ENTRY = "__checkpoint__"
_ARRAY, _TUPLE, _SCALAR = "__array__", "__tuple__", "__scalar__"
MODEL_COPIES_ALLOWED = 4  # the weights and up to three optimizer buffers of each (Adam keeps two)
ARRAY_BYTES_BEYOND_THE_MODEL = 64 * 2**20  # random states, the trainer's records, the JSON header


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model or optimizer."""


def save_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None, **meta: Any) -> None:
    """Write model, optimizer and RNG state and `meta` to exactly `path`, atomically.

    The data goes to a temporary file in the same folder, is flushed to disk (fsync) and
    renamed over `path` (os.replace), so a crash or kill during the write leaves any
    previous checkpoint at `path` intact; temporary files such kills left behind are removed
    by the next successful write. The file's mode is 0o666 less the umask. The optimizer's
    per-parameter state is stored under the parameters' names in `model` when it holds all of them.

    Args:
        path: the file to write (no suffix is added).
        model: anything with `state_dict()` (a layer, a Sequential, a data-parallel wrapper).
        optimizer: optional, anything with `state_dict()`.
        **meta: JSON-like values (numbers, strings, None, lists, tuples, dicts with string keys)
            and numpy/cupy arrays, returned by `load_checkpoint`.

    Raises:
        TypeError: for a meta value that cannot be stored, naming where it is.
        OSError: when the file cannot be written (a full disk, say), naming it.
    """
    optimizer_state = None
    if optimizer is not None:
        optimizer_state = named_optimizer_state(optimizer.state_dict(), optimizer_parameter_names(model, optimizer))
    write_checkpoint(path, model.state_dict(), optimizer_state, **meta)


def write_checkpoint(path: str | os.PathLike, model_state: dict[str, Any], optimizer_state: dict[str, Any] | None,
                     **meta: Any) -> None:
    """Write already gathered state dicts (and this process's RNG state) to `path`, atomically.

    Args:
        path: the file to write.
        model_state: the whole model's state dict, by full names.
        optimizer_state: an optimizer state dict (see `named_optimizer_state`) or None.
        **meta: as for `save_checkpoint`.

    Raises:
        TypeError: for a value that cannot be stored, naming where it is.
    """
    path = os.fspath(path)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_state,
        "optimizer": optimizer_state,
        "rng": rng.get_rng_state(),
        "meta": meta,
    }
    arrays: dict[str, numpy.ndarray] = {}
    header = json.dumps(_encode(state, "", arrays))
    arrays[HEADER_ENTRY] = numpy.array(header)
    write_atomically(path, arrays)


def named_optimizer_state(state: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """`state` (an optimizer's state_dict) with its parameters named instead of numbered.

    Args:
        state: from `optimizer.state_dict()`; its "state" lists one entry per parameter and each of
            its "param_groups" lists the indices of its parameters.
        names: the full name of each of the optimizer's parameters, in its order; None keeps the list.

    Returns:
        A copy of `state` whose "state" is {name: entry} and whose groups list parameter names.
    """
    if names is None:
        return state
    groups = [{**group, "params": [names[index] for index in group["params"]]} for group in state.get("param_groups", [])]
    return {**state, "state": dict(zip(names, state["state"])), "param_groups": groups}


def merged_optimizer_state(state: dict[str, Any], merge: Callable[[dict], dict | None]) -> dict[str, Any] | None:
    """A named optimizer state of the whole model from each process's part (pipeline stages hold parts).

    Args:
        state: from `named_optimizer_state`, this process's parameters only.
        merge: joins a dict keyed by parameter name over the processes (a strategy's `ranks.join`);
            collective; None on the processes that do not receive the union.

    Returns:
        The whole model's state where `merge` delivers the union, else None.
    """
    entries = merge(state["state"])
    group_of = merge({name: index for index, group in enumerate(state.get("param_groups", []))
                      for name in group["params"]})
    if entries is None:
        return None
    groups = [{**group, "params": [name for name, owner in group_of.items() if owner == index]}
              for index, group in enumerate(state.get("param_groups", []))]
    return {**state, "state": entries, "param_groups": groups}


def indexed_optimizer_state(state: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """The inverse of `named_optimizer_state` for an optimizer whose parameters are `names`.

    A state by name keeps only the entries of `names` (a pipeline stage takes its own), and
    each group keeps the indices of the parameters of `names` it holds; a state saved as a
    list (no names) is returned unchanged.

    Raises:
        ValueError: when the state is by name and lacks some of `names`, or `names` is None.
    """
    saved = state.get("state")
    if not isinstance(saved, dict):
        return state
    if names is None:
        raise ValueError("the optimizer state is stored by parameter name, but the optimizer's parameters "
                         "are not all in the model; build the optimizer from model.parameters()")
    missing = [name for name in names if name not in saved]
    if missing:
        raise ValueError(f"the optimizer state has no entry for the parameters {missing}; "
                         f"it holds {sorted(saved)}")
    index_of = {name: index for index, name in enumerate(names)}
    groups = [{**group, "params": sorted(index_of[name] for name in group["params"] if name in index_of)}
              for group in state.get("param_groups", [])]
    return {**state, "state": [saved[name] for name in names], "param_groups": groups}


def optimizer_parameter_names(model: Any, optimizer: Any) -> list[str] | None:
    """The model's full name of each of the optimizer's parameters, or None when some are not in the model.

    Args:
        model: anything with `named_parameters()` (a layer or a training strategy).
        optimizer: anything with a `params` list.
    """
    name_of: dict[int, str] = {}
    for name, p in model.named_parameters() if hasattr(model, "named_parameters") else ():
        name_of.setdefault(id(p), name)  # a tied weight by its first name, which every layout lists
    names = [name_of.get(id(p)) for p in getattr(optimizer, "params", [])]
    return None if not names or None in names else names


def load_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None) -> dict[str, Any]:
    """Restore model, optimizer and RNG state from `path`; return the `meta` it was saved with.

    Everything is checked before anything is changed, so a failed load leaves model and
    optimizer as they were.

    Raises:
        FileNotFoundError: when `path` does not exist.
        CheckpointError: when the file is truncated, corrupt or not a checkpoint, or when its
            model or optimizer state does not match `model` / `optimizer`; the message names
            the file and the mismatch.
    """
    path = os.fspath(path)
    state = read_checkpoint(path, model)
    check_model_state(path, state["model"], {name: tuple(a.shape) for name, a in model.state_dict().items()})
    if optimizer is not None:
        load_optimizer_state(path, state["optimizer"], optimizer, optimizer_parameter_names(model, optimizer))
    model.load_state_dict(state["model"])
    rng.set_rng_state(state["rng"])
    return state["meta"]


def read_checkpoint(path: str | os.PathLike, model: Any = None) -> dict[str, Any]:
    """The whole decoded content of a checkpoint: {"format", "version", "model", "optimizer", "rng", "meta"}.

    Every array's header (dtype, shape, size against the file and, with `model`, against the
    model's parameters) is checked before any array is decompressed or allocated. All
    arrays together may take at most 4 times the larger of the model's bytes (the weights
    and optimizer buffers) and the file's size, plus 64 MiB; a file that promises more (a
    compressed member that would inflate far beyond its size) is refused, so a hostile file
    cannot exhaust memory.

    Args:
        path: the checkpoint file.
        model: optional, the model it will be loaded into (anything with `state_dict()`).

    Raises:
        FileNotFoundError, CheckpointError: as `load_checkpoint`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        arrays = read_members(path, _memory_budget(path, model), _model_shape_check(path, model))
        if HEADER_ENTRY not in arrays:
            raise CheckpointError(f"checkpoint {path} is not an {FORMAT} file: it has no {HEADER_ENTRY!r} entry")
        header = json.loads(str(arrays.pop(HEADER_ENTRY)))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path} is not an {FORMAT} file")
        if header.get("version") != VERSION:
            raise CheckpointError(f"checkpoint {path} has format version {header.get('version')}; "
                                  f"this code reads version {VERSION}")
        return _decode(header, arrays)
    except CheckpointError:
        raise
    except ArchiveRefused as error:
        raise CheckpointError(f"checkpoint {path} is refused: {error}") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {path} is corrupt: its header is nested too deeply to decode") from None
    except KeyError as error:
        raise CheckpointError(f"checkpoint {path} is corrupt: array {error} is referenced but missing") from error
    except TypeError as error:  # the header's structure is not one `_encode` writes
        raise CheckpointError(f"checkpoint {path} is corrupt: its header does not describe a checkpoint "
                              f"({error})") from error
    except (MemoryError, *DAMAGED_NPZ_ERRORS) as error:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(error).__name__}: {error})") from error


def _memory_budget(path: str, model: Any) -> int:
    """Bytes the arrays of the checkpoint at `path` may take (see `read_checkpoint`)."""
    model_bytes = 0 if model is None else sum(int(array.nbytes) for array in model.state_dict().values())
    return ARRAY_BYTES_BEYOND_THE_MODEL + MODEL_COPIES_ALLOWED * max(model_bytes, os.path.getsize(path))


def _model_shape_check(path: str, model: Any) -> Callable[[str, tuple, Any], None]:
    """A check of each array header against the model's parameter of that name (none without a model).

    A training strategy gives the whole model's shapes (`state_shapes`), which a tensor-parallel
    rank's own shares are not.
    """
    shapes = {} if model is None else model.state_shapes() if hasattr(model, "state_shapes") else \
        {name: tuple(array.shape) for name, array in model.state_dict().items()}
    expected = {f"model/{name}": tuple(shape) for name, shape in shapes.items()}

    def check(name: str, shape: tuple, dtype: Any) -> None:
        if name in expected and shape != expected[name]:
            raise CheckpointError(f"checkpoint {path} was saved from a different architecture: "
                                  f"{name[len('model/'):]!r} is {shape} in the file but {expected[name]} in the model")
    return check


def check_model_state(path: str, saved: dict[str, numpy.ndarray], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise unless the saved model state has exactly the names and shapes of `expected` (the whole model's).

    Raises:
        CheckpointError: naming the file, the missing, unexpected and reshaped entries.
    """
    found = {name: tuple(array.shape) for name, array in saved.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = [f"{name!r} is {found[name]} in the file but {expected[name]} in the model"
                for name in expected if name in found and found[name] != expected[name]]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"missing from the file: {missing}")
        if unexpected:
            problems.append(f"not in the model: {unexpected}")
        problems.extend(reshaped)
        raise CheckpointError(f"checkpoint {path} was saved from a different architecture: " + "; ".join(problems))


def load_optimizer_state(path: str, saved: dict[str, Any] | None, optimizer: Any, names: list[str] | None) -> None:
    """Load a checkpoint's optimizer state into `optimizer`, whose parameters have the full `names`.

    Raises:
        CheckpointError: when there is none, or it does not fit the optimizer.
    """
    if saved is None:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state; load it with optimizer=None")
    try:
        optimizer.load_state_dict(indexed_optimizer_state(saved, names))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit the optimizer: {error}") from error


def _encode(value: Any, where: str, arrays: dict[str, numpy.ndarray]) -> Any:
    """JSON-ready form of `value`; arrays are moved to `arrays` under the name `where`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numpy.generic):
        arrays[where] = numpy.asarray(value)
        return {_ARRAY: where, _SCALAR: True}
    if is_array(value):
        arrays[where] = to_numpy(value)
        return {_ARRAY: where}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or key in (_ARRAY, _TUPLE, _SCALAR):
                raise TypeError(f"checkpoint cannot store dict key {key!r} at {where or 'the top'}; use string keys")
        return {key: _encode(item, f"{where}/{key}" if where else key, arrays) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, f"{where}/{index}", arrays) for index, item in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    raise TypeError(f"checkpoint cannot store a {type(value).__name__} at {where or 'the top'}; "
                    "use numbers, strings, lists, tuples, dicts or arrays")


def _decode(value: Any, arrays: dict[str, numpy.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode(item, arrays) for item in value]
    if not isinstance(value, dict):
        return value
    if _ARRAY in value:
        array = arrays[value[_ARRAY]]
        return array[()] if value.get(_SCALAR) else array
    if _TUPLE in value:
        return tuple(_decode(item, arrays) for item in value[_TUPLE])
    return {key: _decode(item, arrays) for key, item in value.items()}
