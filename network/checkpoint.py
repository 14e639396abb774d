"""Checkpoints: model, optimizer and RNG state plus metadata in one .npz file, written atomically, read without pickle.

The file is a numpy .npz archive: every array is an entry named by its place in the
state ("model/0.weight", "optimizer/state/0/exp_avg", ...) and the entry "__checkpoint__"
holds JSON describing the whole structure (numbers, strings, lists, dicts, tuples) with
references to those arrays. Zip CRCs catch corrupted bytes; nothing is unpickled.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable

import numpy

from mpiprop.network import rng
from mpiprop.network.backend import is_array, to_numpy
from mpiprop.network.checkpoint_archive import ArchiveRefused, read_members
from mpiprop.network.checks import DAMAGED_NPZ_ERRORS

FORMAT = "mpiprop-checkpoint"
VERSION = 1
HEADER_ENTRY = "__checkpoint__"
_ARRAY, _TUPLE, _SCALAR = "__array__", "__tuple__", "__scalar__"
MODEL_COPIES_ALLOWED = 4  # the weights and up to three optimizer buffers of each (Adam keeps two)
ARRAY_BYTES_BEYOND_THE_MODEL = 64 * 2**20  # random states, the trainer's records, the JSON header
TEMPORARY_SUFFIX = ".tmp"
NEW_FILE_MODE = 0o666  # less the umask, as for any file the process creates


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model or optimizer."""


def save_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None, **meta: Any) -> None:
    """Write model, optimizer and RNG state and `meta` to exactly `path`, atomically.

    The data goes to a temporary file in the same folder, is flushed to disk (fsync) and
    renamed over `path` (os.replace), so a crash or kill during the write leaves any
    previous checkpoint at `path` intact; temporary files such kills left behind are removed
    by the next successful write. The file's mode is 0o666 less the umask.

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
    path = os.fspath(path)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": rng.get_rng_state(),
        "meta": meta,
    }
    arrays: dict[str, numpy.ndarray] = {}
    header = json.dumps(_encode(state, "", arrays))
    arrays[HEADER_ENTRY] = numpy.array(header)
    _write_atomically(path, arrays)


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
    _check_model(path, state["model"], model)
    if optimizer is not None:
        _load_optimizer(path, state["optimizer"], optimizer)
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
    """A check of each array header against the model's parameter of that name (none without a model)."""
    expected = {} if model is None else {f"model/{name}": tuple(array.shape)
                                         for name, array in model.state_dict().items()}

    def check(name: str, shape: tuple, dtype: Any) -> None:
        if name in expected and shape != expected[name]:
            raise CheckpointError(f"checkpoint {path} was saved from a different architecture: "
                                  f"{name[len('model/'):]!r} is {shape} in the file but {expected[name]} in the model")
    return check


def _check_model(path: str, saved: dict[str, numpy.ndarray], model: Any) -> None:
    expected = {name: tuple(array.shape) for name, array in model.state_dict().items()}
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


def _load_optimizer(path: str, saved: dict[str, Any] | None, optimizer: Any) -> None:
    if saved is None:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state; load it with optimizer=None")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit the optimizer: {error}") from error


def _write_atomically(path: str, arrays: dict[str, numpy.ndarray]) -> None:
    """Write to a temporary file beside `path`, fsync, give it the mode the umask allows, rename over `path`.

    Raises:
        OSError: naming `path` (a full disk, a missing folder, no permission); the temporary
            file is removed and any previous checkpoint at `path` is left intact.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=TEMPORARY_SUFFIX,
                                                 dir=directory)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            numpy.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, NEW_FILE_MODE & ~_umask())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        raise
    _remove_stray_temporaries(path)
    _fsync_directory(directory)


def _write_error(path: str, error: OSError) -> OSError:
    return OSError(error.errno, f"cannot write checkpoint {path}: {error.strerror or error}; free space or choose "
                                "another folder (any previous checkpoint there is intact)")


def _temporary_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def _remove_stray_temporaries(path: str) -> None:
    """Remove temporary files that writes of `path` killed midway left beside it."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temporary_prefix(path)
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(TEMPORARY_SUFFIX):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it (changing it races other threads)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    current = os.umask(0o022)
    os.umask(current)
    return current


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable; not every platform can open a folder, which is fine."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


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
