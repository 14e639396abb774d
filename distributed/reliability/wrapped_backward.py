"""Refuse the backward of a model called directly while a wrapper must run it to keep the ranks' replicas alike."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from mpiprop.network.layers.layer import Layer


class WrappedBackward:
    """Makes `module.backward` raise unless called by its wrapper, inside `allowed()`.

    A model that DataParallel wraps keeps its own `backward`; called directly, it computes this
    rank's gradients and never averages them, so each rank's optimizer would step on its own
    gradients and the replicas would silently drift apart. This marks the model (an instance
    attribute in front of its class's `backward`), at the cost of one flag test per backward.

    Args:
        module: the wrapped model.
        owner: the wrapper's name, for the message (e.g. "DataParallel").
        instead: what to call instead (e.g. "dp.backward(dout)").
    """

    def __init__(self, module: Layer, owner: str, instead: str):
        self.owner, self.instead = owner, instead
        self._inside = False
        self._own_backward = module.backward
        module.backward = self._backward

    def _backward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._inside:
            raise RuntimeError(f"backward was called on the model that {self.owner} wraps, so its gradients "
                               f"would not be averaged over the ranks and the replicas would drift apart; call "
                               f"{self.instead} (or train_step) instead of model.backward")
        return self._own_backward(*args, **kwargs)

    @contextmanager
    def allowed(self) -> Iterator[None]:
        """Within this context the model's backward runs (the wrapper's own call)."""
        previous, self._inside = self._inside, True
        try:
            yield
        finally:
            self._inside = previous
