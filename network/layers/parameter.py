"""Parameter: a trainable array and the gradient accumulated into it."""
from __future__ import annotations

from mpiprop.network.backend import Array, get_array_module, to_device


class Parameter:
    """A trainable array `data` with a gradient `grad` of the same shape, dtype and array module.

    Backward passes add into `grad` in place (never rebind it), so `grad` may be a view
    into a larger buffer, as the data-parallel gradient buckets are. For the same reason "no
    gradient" (PyTorch's `grad is None`) is the flag `has_grad`, not a missing array:
    `zero_grad(set_to_none=True)` clears it, a layer's backward sets it again for the layer's
    own parameters, and optimizers skip a parameter without it.
    """

    def __init__(self, data: Array):
        xp = get_array_module(data)
        self.data = data
        self.grad = xp.zeros_like(data)
        self.has_grad = True

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset the gradient to zero, in place.

        Args:
            set_to_none: also mark the parameter as having no gradient (`has_grad = False`)
                until a layer's backward gives it one, so optimizers leave it as it is.
        """
        self.grad.fill(0)
        if set_to_none:
            self.has_grad = False

    def to(self, device: str | None = None, dtype=None) -> "Parameter":
        """Move data and grad to `device` and/or cast them to `dtype`, in place; returns self."""
        for name in ("data", "grad"):
            array = getattr(self, name)
            if device is not None:
                array = to_device(array, device)
            if dtype is not None:
                array = array.astype(dtype, copy=False)
            setattr(self, name, array)
        return self

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"
