"""Optimizer: the base class holding parameter groups, their hyperparameters and per-parameter state."""
from __future__ import annotations

from typing import Any, Iterable

from mpiprop.network.backend import device_of, to_device, to_numpy
from mpiprop.network.checks import non_negative_float
from mpiprop.network.layers.parameter import Parameter

ParamsOrGroups = Iterable[Parameter] | Iterable[dict[str, Any]]


class Optimizer:
    """Updates parameters from their gradients, group by group, as torch.optim does.

    `params` is a list of parameters, or a list of parameter groups: dicts with "params" (a
    list of parameters) and any hyperparameters of their own, e.g.
    `[{"params": weights}, {"params": biases, "weight_decay": 0.0}]`; a group's missing
    hyperparameters take the optimizer's arguments. `param_groups` holds the groups, each with
    every hyperparameter and "initial_lr" (its learning rate at construction, which
    `lr_schedules.set_lr` scales a schedule by). Per-parameter state (momentum, moments) is a dict
    of arrays per parameter, in `self.state[i]` for `self.params[i]` (all groups' parameters in order).

    Args:
        params: parameters, or parameter groups.
        defaults: every hyperparameter's value for groups that do not set it.

    Raises:
        ValueError: for no parameters, a parameter given twice, an unknown group option or a bad value.
        TypeError: for something that is not a Parameter.
    """

    hyperparameter_names: tuple[str, ...] = ("lr",)

    def __init__(self, params: ParamsOrGroups, defaults: dict[str, Any]):
        name = type(self).__name__
        self.defaults = self._checked(defaults, name)
        groups, explicit = _as_groups(params, name)
        self.param_groups: list[dict[str, Any]] = [
            self._group(group, f"{name} parameter group {index}" if explicit else name)
            for index, group in enumerate(groups)]
        self.params = [p for group in self.param_groups for p in group["params"]]
        if not self.params:
            raise ValueError(f"{name} got an empty parameter list; pass model.parameters()")
        _refuse_duplicates(self.param_groups, name)
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self.step_count = 0

    def _group(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """A complete group: its parameters, checked, and every hyperparameter."""
        unknown = sorted(set(group) - {"params"} - set(self.hyperparameter_names))
        if unknown:
            raise ValueError(f"{where} has unknown options {unknown}; {type(self).__name__} options are "
                             f"{list(self.hyperparameter_names)}")
        params = list(group["params"])
        for position, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{where} parameter {position} is a {type(p).__name__}, not a Parameter")
        values = self._checked({**self.defaults, **{k: v for k, v in group.items() if k != "params"}}, where)
        return {"params": params, **values, "initial_lr": values["lr"]}

    def _checked(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        """`values` validated and normalised (e.g. floats); a subclass checks its own hyperparameters.

        Raises:
            ValueError, TypeError: naming `where`, the hyperparameter and its value.
        """
        return {**values, "lr": non_negative_float(values["lr"], f"{where} learning rate lr")}

    @property
    def lr(self) -> float:
        """The first parameter group's learning rate (the only one without groups)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        rates = [group["lr"] for group in self.param_groups]
        if len(set(rates)) > 1:
            raise ValueError(f"the {len(rates)} parameter groups have different learning rates {rates}; set "
                             "optimizer.param_groups[i]['lr'] for each, or follow a schedule with "
                             "mpiprop.network.optim.lr_schedules.set_lr")
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset every parameter's gradient to zero.

        Args:
            set_to_none: PyTorch's default: a parameter then counts as having no gradient until
                a layer's backward gives it one, and `step` leaves it untouched (no momentum,
                weight decay or Adam step). With False (the default here, PyTorch's
                `set_to_none=False`) every parameter is updated, a zero gradient included.
        """
        for p in self.params:
            p.zero_grad(set_to_none)

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient (see `zero_grad`), with its group's
        hyperparameters.

        Raises:
            ValueError: for a learning rate that became negative or NaN (nothing is updated).
        """
        for group in self.param_groups:
            non_negative_float(group["lr"], "learning rate lr")
        self.step_count += 1
        states = iter(self.state)
        for group in self.param_groups:
            for p in group["params"]:
                state = next(states)
                if p.has_grad:
                    self._update(p, state, group)

    def _update(self, p: Parameter, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _update")

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters (those of the first group under "hyperparameters", every group's under
        "param_groups", with the indices of its parameters), step count and per-parameter state,
        as host (numpy) copies."""
        groups, start = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + count))})
            start += count
        return {
            "type": type(self).__name__,
            "hyperparameters": {name: self.param_groups[0][name] for name in self.hyperparameter_names},
            "param_groups": groups,
            "step_count": self.step_count,
            "state": [{key: _host_copy(value) for key, value in s.items()} for s in self.state],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`, moving arrays to each parameter's device.

        Raises:
            ValueError: when it was saved by another optimizer type, for other parameter groups
                or for other parameter shapes.
        """
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state was saved by {state.get('type')} but this is {type(self).__name__}")
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state holds {len(state['state'])} parameters but this optimizer has {len(self.params)}")
        saved_groups = state.get("param_groups") or [{**state["hyperparameters"], "params": range(len(self.params))}]
        saved_sizes = [len(group["params"]) for group in saved_groups]
        sizes = [len(group["params"]) for group in self.param_groups]
        if saved_sizes != sizes:
            raise ValueError(f"optimizer state holds parameter groups of sizes {saved_sizes} but this optimizer's "
                             f"groups have sizes {sizes}; build the optimizer with the same groups")
        for index, (p, saved) in enumerate(zip(self.params, state["state"])):
            for key, value in saved.items():
                if hasattr(value, "shape") and tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state {key!r} of parameter {index} has shape {tuple(value.shape)} "
                                     f"but the parameter has shape {tuple(p.shape)}")
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({key: value for key, value in saved.items() if key != "params"})
            group.setdefault("initial_lr", group["lr"])
        self.step_count = state["step_count"]
        self.state = [
            {key: _to_parameter_device(value, p) for key, value in saved.items()}
            for p, saved in zip(self.params, state["state"])
        ]


def _as_groups(params: ParamsOrGroups, name: str) -> tuple[list[dict[str, Any]], bool]:
    """The argument `params` as a list of group dicts, and whether it was given as groups."""
    items = list(params)
    kinds = {isinstance(item, dict) for item in items}
    if kinds == {True, False}:
        raise TypeError(f"{name} got a mix of parameters and parameter groups; pass either a list of "
                        "parameters or a list of dicts with 'params'")
    if kinds != {True}:
        return [{"params": items}], False
    for index, group in enumerate(items):
        if "params" not in group:
            raise ValueError(f"{name} parameter group {index} has no 'params' entry; give each group "
                             "as {'params': [...], ...}")
        if isinstance(group["params"], Parameter):
            items[index] = {**group, "params": [group["params"]]}
    return items, True


def _refuse_duplicates(groups: list[dict[str, Any]], name: str) -> None:
    """PyTorch warns about a parameter given twice; it would be updated twice per step, so it is an error."""
    first_seen: dict[int, tuple[int, int]] = {}
    for group_index, group in enumerate(groups):
        for position, p in enumerate(group["params"]):
            where = (group_index, position)
            if id(p) in first_seen:
                (g0, p0) = first_seen[id(p)]
                raise ValueError(f"{name} got the same {p!r} twice: as parameter {p0} of group {g0} and as "
                                 f"parameter {position} of group {group_index}; it would be updated twice per "
                                 "step; pass each parameter once (a model's parameters() lists a shared one once)")
            first_seen[id(p)] = where


def _host_copy(value: Any) -> Any:
    return to_numpy(value).copy() if hasattr(value, "shape") else value


def _to_parameter_device(value: Any, p: Parameter) -> Any:
    if not hasattr(value, "shape"):
        return value
    return to_device(value, device_of(p.data)).astype(p.dtype, copy=True)
