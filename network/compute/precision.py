"""Training precision: how the layers' matrix products are computed ("fp32", "tf32", "fp16-mixed", "bf16-mixed")."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import numpy

from mpiprop.network.backend import Array, get_array_module


@dataclass(frozen=True)
class Precision:
    """One precision mode.

    Attributes:
        name: "fp32", "tf32", "fp16-mixed" or "bf16-mixed".
        product_dtype: the dtype the products' inputs are rounded to (None: the parameters' own).
        tf32: whether float32 products may use TF32 tensor cores.
        loss_scaling: whether the loss must be scaled so float16 gradients neither overflow nor flush to zero.
    """

    name: str
    product_dtype: str | None
    tf32: bool
    loss_scaling: bool

    @property
    def mixed(self) -> bool:
        """True when products run in half precision while weights, optimizer state and reductions stay float32."""
        return self.product_dtype is not None


PRECISIONS = {
    "fp32": Precision("fp32", None, tf32=False, loss_scaling=False),
    "tf32": Precision("tf32", None, tf32=True, loss_scaling=False),
    "fp16-mixed": Precision("fp16-mixed", "float16", tf32=False, loss_scaling=True),
    "bf16-mixed": Precision("bf16-mixed", "bfloat16", tf32=False, loss_scaling=False),
}
FP32 = PRECISIONS["fp32"]
_current: contextvars.ContextVar[Precision] = contextvars.ContextVar("mpiprop_precision", default=FP32)


def precision_named(name: "str | Precision") -> Precision:
    """The Precision called `name`.

    Raises:
        ValueError: for a name not in PRECISIONS.
    """
    if isinstance(name, Precision):
        return name
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def precision_for_device(name: "str | Precision", device: str) -> Precision:
    """The Precision called `name`, checked against the device that will compute with it.

    Args:
        name: a precision name or Precision.
        device: "cpu" or "cuda".

    Raises:
        ValueError: for an unknown name, or for a mode other than "fp32" on the CPU, where TF32 does not
            exist and half-precision products are slower than float32 (no tensor cores).
    """
    precision = precision_named(name)
    if device == "cpu" and precision is not FP32:
        raise ValueError(f"precision {precision.name!r} needs a GPU: the CPU has no TF32 and computes "
                         "half-precision products slower than float32; use precision='fp32' on the CPU, "
                         "or move the model with model.to('cuda')")
    return precision


def current_precision() -> Precision:
    """The precision the layers' products use now (fp32 unless inside `using_precision`)."""
    return _current.get()


@contextlib.contextmanager
def using_precision(precision: "str | Precision") -> Iterator[Precision]:
    """Compute the layers' products in `precision` inside the block; the layer code stays as it is."""
    token = _current.set(precision_named(precision))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def round_for_product(array: Array, precision: Precision) -> Array:
    """`array` rounded to the precision's product dtype and returned as float32 (the accumulation type).

    A half-precision tensor-core product multiplies half inputs exactly and accumulates in float32;
    rounding both inputs and multiplying in float32 gives the same numbers, on any array module.

    Raises:
        ValueError: for bf16 on an array module without a bfloat16 dtype.
    """
    if not precision.mixed:
        return array
    xp = get_array_module(array)
    return array.astype(_half_dtype(xp, precision.product_dtype)).astype(numpy.float32)


def _half_dtype(xp, name: str):
    """The array module's dtype for `name` ("float16", or "bfloat16" from ml_dtypes on numpy)."""
    if name == "float16":
        return xp.float16
    try:
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    if xp is numpy and ml_dtypes is not None:
        return ml_dtypes.bfloat16
    raise ValueError(f"{xp.__name__} has no bfloat16 dtype here; install ml_dtypes (numpy) or use "
                     "precision='fp16-mixed'")
