"""Optimizer: the base class holding parameters, hyperparameters and per-parameter state."""
from __future__ import annotations

from typing import Any, Iterable

from mpiprop.network.backend import device_of, to_device, to_numpy
from mpiprop.network.checks import non_negative_float
from mpiprop.network.parameter import Parameter


class Optimizer:
    """Updates a list of parameters from their gradients.

    Hyperparameters are plain attributes (`optimizer.lr = 0.01` is how a schedule
    changes the learning rate). Per-parameter state (momentum, moments) is a dict of
    arrays per parameter, in `self.state[i]` for `self.params[i]`.
    """

    hyperparameter_names: tuple[str, ...] = ("lr",)

    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass model.parameters()")
        for index, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__} parameter {index} is a {type(p).__name__}, not a Parameter")
        self.lr = non_negative_float(lr, "learning rate lr")
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self.step_count = 0

    def zero_grad(self) -> None:
        """Reset every parameter's gradient to zero."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """Apply one update to every parameter."""
        non_negative_float(self.lr, "learning rate lr")
        self.step_count += 1
        for p, state in zip(self.params, self.state):
            self._update(p, state)

    def _update(self, p: Parameter, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _update")

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, step count and per-parameter state, as host (numpy) copies."""
        return {
            "type": type(self).__name__,
            "hyperparameters": {name: getattr(self, name) for name in self.hyperparameter_names},
            "step_count": self.step_count,
            "state": [{key: _host_copy(value) for key, value in s.items()} for s in self.state],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`, moving arrays to each parameter's device.

        Raises:
            ValueError: when it was saved by another optimizer type or for other parameter shapes.
        """
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state was saved by {state.get('type')} but this is {type(self).__name__}")
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state holds {len(state['state'])} parameters but this optimizer has {len(self.params)}")
        for index, (p, saved) in enumerate(zip(self.params, state["state"])):
            for key, value in saved.items():
                if hasattr(value, "shape") and tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state {key!r} of parameter {index} has shape {tuple(value.shape)} "
                                     f"but the parameter has shape {tuple(p.shape)}")
        for name, value in state["hyperparameters"].items():
            setattr(self, name, value)
        self.step_count = state["step_count"]
        self.state = [
            {key: _to_parameter_device(value, p) for key, value in saved.items()}
            for p, saved in zip(self.params, state["state"])
        ]


def _host_copy(value: Any) -> Any:
    return to_numpy(value).copy() if hasattr(value, "shape") else value


def _to_parameter_device(value: Any, p: Parameter) -> Any:
    if not hasattr(value, "shape"):
        return value
    return to_device(value, device_of(p.data)).astype(p.dtype, copy=True)
