"""Weights shared with PyTorch: a model's state under torch's names and layouts, and safetensors files."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy

from mpiprop.network.backend import Array, device_of, to_device, to_numpy
from mpiprop.network.layers.batchnorm import BatchNorm1d
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.linear import Linear
from mpiprop.network.layers.parameter import Parameter

Convert = Callable[[numpy.ndarray], numpy.ndarray]


def _transposed(array: numpy.ndarray) -> numpy.ndarray:
    return numpy.ascontiguousarray(array.T)


# Per layer type, the entries whose torch layout differs from ours: name -> (ours to torch, torch to ours).
# Every other entry (Embedding, LayerNorm, BatchNorm, TiedLinear's (V, C), convolution weights) is stored as it is.
TORCH_LAYOUTS: dict[type, dict[str, tuple[Convert, Convert]]] = {
    Linear: {"weight": (_transposed, _transposed)},  # ours (in, out), torch's (out, in)
}

# Per layer type, entries of torch's module that ours may lack: skipped on loading where the model has none.
TORCH_ONLY: dict[type, tuple[str, ...]] = {
    BatchNorm1d: ("num_batches_tracked",),  # ours counts batches only where momentum=None needs it
}

SAFETENSORS_MISSING = ("reading and writing safetensors files needs the safetensors package: "
                       "pip install 'mpiprop[weights]' (or pip install safetensors)")


def torch_state_dict(model: Layer) -> dict[str, numpy.ndarray]:
    """The model's parameters and buffers as numpy arrays under the names and layouts of a torch mirror.

    The names are the model's own (`model.state_dict()`'s), which a torch module built with the
    same nesting (an `nn.Sequential` for each Sequential, children with the same attribute names)
    has too. A tied weight (one Parameter used by two layers, as GPT's embedding and head) appears
    under each of its names, as torch's `state_dict()` lists it, so `module.load_state_dict(...)`
    with strict=True accepts the result.

    Args:
        model: any network Layer.

    Returns:
        {name: a C-contiguous numpy copy}, e.g. a Linear's "weight" of shape (out, in).
    """
    state = {}
    for name, array, (to_torch, _) in _entries(model):
        state[name] = numpy.array(to_torch(to_numpy(array)), order="C", copy=True)
    return state


def load_torch_state_dict(model: Layer, state: dict[str, Any]) -> None:
    """Copy a torch-layout state (numpy arrays, or torch tensors) into the model's parameters and buffers, in place.

    Each entry is cast to the model's dtype and moved to its device. A tied weight may appear under
    all its names (torch's `state_dict()`) or under any one of them (safetensors' `save_model`
    keeps one); when several are given they must agree. Entries of torch's modules that ours lack
    (`TORCH_ONLY`, such as a BatchNorm's `num_batches_tracked` where ours keeps no count) are skipped.

    Args:
        model: the network Layer to fill.
        state: {name: array} as `torch_state_dict` returns or `torch.nn.Module.state_dict()` gives.

    Raises:
        KeyError: for names the model lacks, or parameters with none of their names in `state`.
        ValueError: for a shape that differs from the torch layout, or tied names that hold different values.
    """
    entries = list(_entries(model))
    known = {name for name, _, _ in entries}
    skipped = {prefix + name for prefix, layer in _named_layers(model) for name in _by_type(TORCH_ONLY, layer, ())}
    unexpected = sorted(set(state) - known - skipped)
    if unexpected:
        raise KeyError(f"the state holds {unexpected}, which the model does not have; its names are "
                       f"{sorted(known)[:8]}{' ...' if len(known) > 8 else ''}")
    for names, target, (to_torch, from_torch) in _tied_groups(entries):
        given = [name for name in names if name in state]
        if not given:
            raise KeyError(f"the state has no entry for {' or '.join(repr(n) for n in names)}")
        values = [_as_numpy(state[name]) for name in given]
        for name, value in zip(given, values):
            if value.ndim != target.ndim or tuple(from_torch(value).shape) != tuple(target.shape):
                expected = tuple(to_torch(numpy.empty(target.shape, dtype=numpy.int8)).shape)
                raise ValueError(f"state entry {name!r} has shape {tuple(value.shape)} but the model expects "
                                 f"{expected} in torch's layout")
        for name, value in zip(given[1:], values[1:]):
            if not numpy.array_equal(value, values[0]):
                raise ValueError(f"state entries {given[0]!r} and {name!r} name one tied weight but hold "
                                 "different values; keep one of them")
        target[...] = to_device(from_torch(values[0]).astype(target.dtype, copy=False), device_of(target))


def save_safetensors(model: Layer, path: str | os.PathLike) -> None:
    """Write `torch_state_dict(model)` to a safetensors file, readable by `safetensors.torch.load_file`
    (a tied weight is stored under each of its names, so `module.load_state_dict` takes the file as it is).

    Raises:
        ImportError: when safetensors is not installed.
    """
    save_file = _safetensors_numpy().save_file
    save_file(torch_state_dict(model), os.fspath(path))


def load_safetensors(model: Layer, path: str | os.PathLike) -> None:
    """Load a safetensors file of torch-layout weights (written by `save_safetensors`, or by torch's
    `safetensors.torch.save_file` / `save_model`) into the model, as `load_torch_state_dict` does.

    Raises:
        ImportError: when safetensors is not installed.
        KeyError, ValueError: as `load_torch_state_dict`.
    """
    load_file = _safetensors_numpy().load_file
    load_torch_state_dict(model, load_file(os.fspath(path)))


def _entries(model: Layer) -> Iterator[tuple[str, Array, tuple[Convert, Convert]]]:
    """(name, array, (to torch, from torch)) for each parameter and buffer, in `state_dict` order; a
    parameter's array is its Parameter's `data` (the same object under each name of a tied weight)."""
    buffers = []
    for prefix, layer in _named_layers(model):
        layouts = _by_type(TORCH_LAYOUTS, layer, {})
        for name, value in vars(layer).items():
            if isinstance(value, Parameter):
                yield prefix + name, value.data, layouts.get(name, (_unchanged, _unchanged))
        buffers += [(prefix + name, getattr(layer, name), (_unchanged, _unchanged)) for name in layer.buffer_names]
    yield from buffers


def _tied_groups(entries: list[tuple[str, Array, tuple[Convert, Convert]]]
                 ) -> list[tuple[list[str], Array, tuple[Convert, Convert]]]:
    """The entries grouped by the array they hold: (names, array, conversions) for each distinct array."""
    groups: dict[int, tuple[list[str], Array, tuple[Convert, Convert]]] = {}
    for name, array, conversions in entries:
        groups.setdefault(id(array), ([], array, conversions))[0].append(name)
    return list(groups.values())


def _named_layers(layer: Layer, prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """(prefix, layer) for the layer and every layer inside it, prefixes as `named_parameters` builds them."""
    yield prefix, layer
    for name, child in layer.children():
        yield from _named_layers(child, f"{prefix}{name}.")


def _by_type(table: dict[type, Any], layer: Layer, default: Any) -> Any:
    """The table's entry for the layer's type or its nearest base class that has one."""
    for kind in type(layer).__mro__:
        if kind in table:
            return table[kind]
    return default


def _unchanged(array: numpy.ndarray) -> numpy.ndarray:
    return array


def _as_numpy(value: Any) -> numpy.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return to_numpy(value)


def _safetensors_numpy() -> Any:
    try:
        import safetensors.numpy
    except ImportError as error:
        raise ImportError(SAFETENSORS_MISSING) from error
    return safetensors.numpy
