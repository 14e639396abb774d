"""Layer: the base class of every layer, with the forward/backward contract and its conveniences."""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

from mpiprop.network.backend import Array, device_of, to_device
from mpiprop.network.layers.parameter import Parameter


class _Remembered:
    """Default of `backward`'s cache argument: use the cache remembered by the last `layer(x)`."""

    def __repr__(self) -> str:
        return "REMEMBERED"


REMEMBERED: Any = _Remembered()


def _marking_own_gradients(backward: Callable) -> Callable:
    """`backward`, followed by `has_grad = True` on each Parameter the layer holds directly."""

    @functools.wraps(backward)
    def marking(self: "Layer", *args: Any, **kwargs: Any) -> Any:
        result = backward(self, *args, **kwargs)
        for value in vars(self).values():
            if isinstance(value, Parameter):
                value.has_grad = True
        return result

    return marking


class Layer:
    """Base class of all layers.

    The contract::

        y, cache = layer.forward(x)       # cache: whatever backward needs
        dx = layer.backward(dy, cache)    # adds into each parameter's .grad

    Nothing per-batch is kept on the layer, so several micro-batches can be in flight.
    A layer with parameters may split `backward` into `backward_input` (returns dx) and
    `backward_weight` (accumulates the parameter gradients); the defaults below make
    that split valid for every layer.

    Parameters are found as attributes holding `Parameter` objects, child layers as
    attributes holding `Layer` objects, both in the order they were assigned. Buffers
    (state that is saved but not trained, e.g. running statistics) are the attribute
    names listed in `buffer_names`.
    """

    buffer_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's `backward` and `backward_weight` mark the layer's own parameters as having a gradient."""
        super().__init_subclass__(**kwargs)
        for name in ("backward", "backward_weight"):
            if name in vars(cls):
                setattr(cls, name, _marking_own_gradients(vars(cls)[name]))

    def __init__(self) -> None:
        self.training = True
        self._last_cache: Any = REMEMBERED

    # --- the contract -------------------------------------------------------------
    def forward(self, x: Array) -> tuple[Array, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward_input(self, dy: Array, cache: Any) -> Array:
        """Gradient of the loss with respect to the input, without touching parameter grads."""
        raise NotImplementedError(f"{type(self).__name__} must implement backward_input")

    def backward_weight(self, dy: Array, cache: Any) -> None:
        """Accumulate the parameter gradients; layers without parameters have nothing to do."""

    def backward(self, dy: Array, cache: Any = REMEMBERED) -> Array:
        """Both halves of backward. Without `cache`, uses the one remembered by the last `layer(x)`."""
        cache = self._cache_or_last(cache)
        self.backward_weight(dy, cache)
        return self.backward_input(dy, cache)

    # --- convenience ----------------------------------------------------------------
    def __call__(self, x: Array) -> Array:
        y, self._last_cache = self.forward(x)
        return y

    def _cache_or_last(self, cache: Any) -> Any:
        if cache is not REMEMBERED:
            return cache
        if self._last_cache is REMEMBERED:
            raise RuntimeError(
                f"{type(self).__name__}.backward was called without a cache and no forward is remembered; "
                "call layer(x) first, or pass the cache returned by layer.forward(x)"
            )
        cache, self._last_cache = self._last_cache, REMEMBERED
        return cache

    def children(self) -> Iterator[tuple[str, "Layer"]]:
        """(name, layer) for each direct sub-layer."""
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                yield name, value

    def descendants(self) -> Iterator["Layer"]:
        """Every layer inside this one, depth first: each child, then the layers inside it."""
        for _, child in self.children():
            yield child
            yield from child.descendants()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(qualified name, parameter) pairs, e.g. ("0.weight", p) in a Sequential."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        """All trainable parameters, in `named_parameters` order, each once (a layer used twice lists its own once)."""
        unique: dict[int, Parameter] = {}
        for _, p in self.named_parameters():
            unique.setdefault(id(p), p)
        return list(unique.values())

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """(qualified name, array) pairs for non-trainable saved state."""
        for name in self.buffer_names:
            yield prefix + name, getattr(self, name)
        for name, child in self.children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def train(self, mode: bool = True) -> "Layer":
        """Switch to training mode (dropout active, batch statistics); returns self."""
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Layer":
        """Switch to evaluation mode; returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset every parameter's gradient to zero (see `Parameter.zero_grad` for `set_to_none`)."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Array]:
        """Copies of all parameters and buffers, keyed by qualified name."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: b.copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Copy `state` into the parameters and buffers in place.

        Raises:
            KeyError: when names are missing or unexpected.
            ValueError: when a shape differs.
        """
        targets = {name: p.data for name, p in self.named_parameters()}
        targets.update(dict(self.named_buffers()))
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise KeyError(f"state dict does not match the model: missing {missing}, unexpected {unexpected}")
        for name, target in targets.items():
            value = state[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"state dict entry {name!r} has shape {tuple(value.shape)} but the model expects {tuple(target.shape)}"
                )
            target[...] = to_device(value, device_of(target))

    def to(self, device: str | None = None, dtype=None) -> "Layer":
        """Move all parameters and buffers to "cpu"/"cuda" and/or cast them to `dtype`; returns self."""
        for p in self.parameters():
            p.to(device, dtype)
        self._move_buffers(device, dtype)
        return self

    def _move_buffers(self, device: str | None, dtype) -> None:
        for name in self.buffer_names:
            array = getattr(self, name)
            if device is not None:
                array = to_device(array, device)
            if dtype is not None and array.dtype.kind == "f":  # counters stay integers
                array = array.astype(dtype, copy=False)
            setattr(self, name, array)
        for _, child in self.children():
            child._move_buffers(device, dtype)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

