"""Small, comparable descriptions of what ranks must build alike: layers, optimizers, schedules, plain settings."""
from __future__ import annotations

import numbers
from typing import Any, Iterator

from mpiprop.network.layers.layer import Layer

Plain = Any  # None, bool, int, float, str, or a tuple of those
NOT_SETTINGS = frozenset({"training", "stream", "numbered_in_parent"})  # modes and bookkeeping, not choices
STREAM_SUFFIX = "_stream"  # a random stream's number counts the layers made since the seed, not a choice
SCHEDULE_SAMPLES = (0, 1, 2, 10, 100, 1000, 10000)


def plain(value: Any) -> tuple[bool, Plain]:
    """(True, value as plain Python) for a scalar or a short tuple of scalars, else (False, None)."""
    if value is None or isinstance(value, (bool, str)):
        return True, value
    if isinstance(value, numbers.Integral):
        return True, int(value)
    if isinstance(value, numbers.Real):
        return True, float(value)
    if isinstance(value, (tuple, list)) and len(value) <= 16:
        items = [plain(item) for item in value]
        if all(ok for ok, _ in items):
            return True, tuple(item for _, item in items)
    return False, None


def public_scalars(obj: Any) -> dict[str, Plain]:
    """The public attributes of `obj` that hold scalars (not arrays, parameters, layers or modes), in order.

    An object whose scalar attribute differs between ranks by design (the offset of a tensor-parallel
    share, say) names it in a class attribute `rank_specific`, and it is left out.
    """
    found = {}
    left_out = NOT_SETTINGS.union(getattr(obj, "rank_specific", ()))
    for name, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
        if name.startswith("_") or name in left_out or name.endswith(STREAM_SUFFIX):
            continue
        ok, value = plain(value)
        if ok:
            found[name] = value
    return found


def layer_entries(layer: Layer, path: str = "model") -> Iterator[tuple[str, Plain]]:
    """(path, type name) of `layer` and every layer inside it, each followed by (path.attribute, value)
    for its public scalar settings (Dropout p, LeakyReLU negative_slope, BatchNorm eps...), in model order."""
    yield path, type(layer).__name__
    for name, value in public_scalars(layer).items():
        yield f"{path}.{name}", value
    for name, child in layer.children():
        yield from layer_entries(child, f"{path}.{name}")


def object_summary(obj: Any) -> str:
    """`TypeName(setting=value, ...)` from the public scalars, e.g. `StepLR(base_lr=0.1, step_size=10, gamma=0.5)`."""
    name = getattr(obj, "__name__", None) or type(obj).__name__
    settings = ", ".join(f"{key}={value!r}" for key, value in public_scalars(obj).items())
    return f"{name}({settings})"


def optimizer_entries(optimizer: Any, name: str = "optimizer") -> Iterator[tuple[str, Plain]]:
    """The optimizer's class, then each parameter group's hyperparameters (its parameters excluded)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # a ShardedOptimizer wraps the optimizer it shards
    yield name, type(inner).__name__
    groups = getattr(optimizer, "param_groups", [])
    yield f"{name} parameter groups", len(groups)
    for index, group in enumerate(groups):
        where = f"{name} group {index} " if len(groups) > 1 else f"{name} "
        for key, value in group.items():
            ok, value = plain(value)
            if key != "params" and ok:
                yield where + key, value


def schedule_entries(schedule: Any, name: str = "lr_schedule") -> Iterator[tuple[str, Plain]]:
    """The schedule's type and settings, then its values at a few steps (which tell apart plain functions)."""
    if schedule is None:
        yield name, None
        return
    yield name, object_summary(schedule)
    values = []
    for t in SCHEDULE_SAMPLES:
        try:
            values.append(plain(schedule(t))[1])
        except Exception as error:  # a schedule may refuse steps past its end; that is part of it too
            values.append(type(error).__name__)
    yield f"{name} values at t={','.join(map(str, SCHEDULE_SAMPLES))}", tuple(values)


def describe(settings: dict[str, Any]) -> dict[str, Plain]:
    """A flat {setting: plain value} for `settings`, whose values may be scalars, layers, optimizers,
    learning-rate schedules (callables) or other objects (described by their type and public scalars)."""
    flat: dict[str, Plain] = {}
    for name, value in settings.items():
        ok, simple = plain(value)
        if ok:
            flat[name] = simple
        elif isinstance(value, Layer):
            flat.update(layer_entries(value, name))
        elif hasattr(value, "param_groups"):
            flat.update(optimizer_entries(value, name))
        elif callable(value) and not isinstance(value, type) and not hasattr(value, "forward"):
            flat.update(schedule_entries(value, name))
        else:
            flat[name] = object_summary(value)
    return flat
