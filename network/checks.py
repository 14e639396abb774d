"""Checks at the public boundary that raise errors naming the values and the fix."""
from __future__ import annotations

import tokenize
import zipfile
import zlib
from typing import Any

import numpy

from mpiprop.network.backend import Array, get_array_module, is_array


# What numpy.load and reading an .npz entry raise for a damaged file: its header parser can
# fail in the tokenizer or the compiler, the archive in zip or zlib; zipfile raises
# RuntimeError (and its subclass NotImplementedError) for member flags it cannot honour, such
# as an encryption bit or an unknown version, which damage can set.
DAMAGED_NPZ_ERRORS = (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile, zlib.error, SyntaxError,
                      tokenize.TokenError, UnicodeDecodeError, RuntimeError)


def positive_int(value: Any, name: str) -> int:
    """Return `value` as an int, or raise if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) and not _is_integer_scalar(value):
        raise TypeError(f"{name} must be a positive integer, got {value!r} of type {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def non_negative_int(value: Any, name: str) -> int:
    """Return `value` as an int, or raise if it is not an integer >= 0 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def non_negative_float(value: Any, name: str) -> float:
    """Return `value` as a float, or raise if it is negative, NaN or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not number >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return number


def float_array(x: Any, name: str) -> Array:
    """Raise unless `x` is a numpy/cupy array of floating dtype."""
    if not is_array(x):
        raise TypeError(f"{name} must be a numpy or cupy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}; convert with x.astype('float32')")
    return x


def float_dtype(dtype: Any, name: str) -> Any:
    """Raise unless `dtype` names a floating dtype (float16/32/64)."""
    if numpy.dtype(dtype).kind != "f":
        raise TypeError(f"{name} must be a floating type, got {numpy.dtype(dtype)}; use numpy.float32 or numpy.float64")
    return dtype


def same_array_module(x: Array, reference: Array, what: object) -> None:
    """Raise when `x` lives on another device than `reference` (numpy vs cupy); the message starts with `what`
    (a name, or a layer: its repr is made only for the message)."""
    if get_array_module(x) is not get_array_module(reference):
        raise TypeError(
            f"{what}: input is a {get_array_module(x).__name__} array but the parameters are "
            f"{get_array_module(reference).__name__} arrays; move one with network.to_device(..) or model.to(..)"
        )


def same_kind_as_weights(x: Array, weight: Array, owner: object) -> None:
    """Raise TypeError unless `x` is on `weight`'s device (numpy or cupy) and of its dtype; the message names
    `owner` (a layer, by its repr, made only for the message) and the fix."""
    same_array_module(x, weight, owner)
    if x.dtype != weight.dtype:
        raise TypeError(f"{owner} has {weight.dtype} weights but got a {x.dtype} input; "
                        f"use x.astype('{weight.dtype}') or model.to(dtype=...)")


def all_finite(x: Array, what: str, fix: str = "lower the learning rate or clip gradients") -> None:
    """Raise when `x` holds NaN or Inf; the message ends with `fix`."""
    xp = get_array_module(x)
    if not bool(xp.isfinite(x).all()):
        bad = int(x.size - int(xp.isfinite(x).sum()))
        raise ValueError(f"{what} holds {bad} NaN or Inf values out of {x.size}; {fix}")


def _is_integer_scalar(value: Any) -> bool:
    return hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0 and value.dtype.kind in "iu"
