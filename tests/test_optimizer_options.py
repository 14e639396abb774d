"""The optimizers' PyTorch options (amsgrad, maximize, parameter groups with their own hyperparameters and
schedules): against torch.optim and torch.optim.lr_scheduler, through state dicts and checkpoints."""
from __future__ import annotations

import itertools
import re

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, ExponentialLR, LinearWarmup, StepLR, set_lr
from mpi_launch import run_mpi

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (3,), (3, 2), (2,)]  # weight, bias, weight, bias


def _initial(seed: int = 0) -> list[numpy.ndarray]:
    rng = numpy.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in SHAPES]


def _groups(params, group_options: list[dict]) -> list[dict]:
    """Weights in the first group, biases in the second, each with its own options."""
    return [{"params": params[0::2], **group_options[0]}, {"params": params[1::2], **group_options[1]}]


def _train_both(name: str, options: dict, group_options: list[dict] | None, steps: int = 5, seed: int = 0,
                schedule=None, torch_scheduler=None):
    """Train our parameters and torch's alike on weight-dependent gradients; return both final values."""
    initial = _initial(seed)
    ours = [nn.Parameter(array.copy()) for array in initial]
    theirs = [torch.tensor(array, requires_grad=True) for array in initial]
    if group_options is None:
        our_optimizer = getattr(nn.optim, name)(ours, **options)
        their_optimizer = getattr(torch.optim, name)(theirs, **options)
    else:
        our_optimizer = getattr(nn.optim, name)(_groups(ours, group_options), **options)
        their_optimizer = getattr(torch.optim, name)(_groups(theirs, group_options), **options)
    scheduler = None if torch_scheduler is None else torch_scheduler(their_optimizer)
    for step in range(steps):
        if schedule is not None:
            set_lr(our_optimizer, schedule, step)
            assert [g["lr"] for g in our_optimizer.param_groups] == pytest.approx(
                [g["lr"] for g in their_optimizer.param_groups], rel=1e-12, abs=1e-15)
        gradients = [numpy.sin(3 * p.data + step) + 0.1 for p in ours]
        our_optimizer.zero_grad()
        their_optimizer.zero_grad()
        for p, t, g in zip(ours, theirs, gradients):
            p.grad += g
            t.grad = torch.tensor(g)
        our_optimizer.step()
        their_optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return [p.data for p in ours], [t.detach().numpy() for t in theirs]


def _assert_same(ours, theirs):
    for index, (p, t) in enumerate(zip(ours, theirs)):
        numpy.testing.assert_allclose(p, t, rtol=1e-11, atol=1e-13, err_msg=f"parameter {index}")


OPTION_CASES = [
    ("Adam", dict(lr=0.02, amsgrad=True)),
    ("Adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1, betas=(0.5, 0.9))),
    ("AdamW", dict(lr=0.02, amsgrad=True, weight_decay=0.3)),
    ("Adam", dict(lr=0.02, maximize=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02, maximize=True, amsgrad=True)),
    ("SGD", dict(lr=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, maximize=True, momentum=0.9, nesterov=True, weight_decay=0.05)),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name, options", OPTION_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTION_CASES)])
@pytest.mark.usefixtures("cpu_loops")
def test_amsgrad_and_maximize_match_torch(name, options, seed):
    _assert_same(*_train_both(name, options, None, seed=seed))


GROUP_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01), [{}, {"weight_decay": 0.0}]),
    ("SGD", dict(lr=0.1), [{"lr": 0.05, "momentum": 0.5, "dampening": 0.1}, {"nesterov": True, "momentum": 0.8}]),
    ("Adam", dict(lr=0.01, weight_decay=0.1), [{"amsgrad": True}, {"weight_decay": 0.0, "lr": 0.003}]),
    ("AdamW", dict(lr=0.01), [{"betas": (0.8, 0.95)}, {"weight_decay": 0.0, "maximize": True}]),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name, options, group_options", GROUP_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(GROUP_CASES)])
@pytest.mark.usefixtures("cpu_loops")
def test_parameter_groups_match_torch(name, options, group_options, seed):
    _assert_same(*_train_both(name, options, group_options, seed=seed))


SCHEDULE_CASES = {
    "cosine with a floor": (lambda lr: CosineAnnealingLR(lr, total=4, min_lr=0.001),
                            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.001)),
    "step": (lambda lr: StepLR(lr, 2, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5)),
    "exponential": (lambda lr: ExponentialLR(lr, 0.8), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.8)),
    "warmup then cosine": (
        lambda lr: LinearWarmup(CosineAnnealingLR(lr, total=3, min_lr=0.002), warmup_steps=3),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LinearLR(o, total_iters=3),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=3, eta_min=0.002)], milestones=[3])),
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_CASES))
def test_schedules_set_each_groups_lr_as_torch_schedulers_do(name):
    ours, theirs = SCHEDULE_CASES[name]
    group_options = [{}, {"lr": 0.01, "weight_decay": 0.0}]
    _assert_same(*_train_both("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01), group_options, steps=9,
                              schedule=ours(0.1), torch_scheduler=theirs))


def test_a_plain_callable_schedule_scales_with_each_groups_lr():
    params = [nn.Parameter(numpy.zeros(2)), nn.Parameter(numpy.zeros(2))]
    optimizer = nn.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.05}], lr=0.1)
    set_lr(optimizer, lambda t: 0.2 / (t + 1), 1)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1, 0.05])


def test_trainer_schedules_every_group():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    decay = [p for name, p in model.named_parameters() if name.endswith("weight")]
    no_decay = [p for name, p in model.named_parameters() if name.endswith("bias")]
    optimizer = nn.optim.SGD([{"params": decay}, {"params": no_decay, "lr": 0.02, "weight_decay": 0.0}],
                             lr=0.1, weight_decay=0.01)
    rng = numpy.random.default_rng(0)
    loader = nn.DataLoader(nn.ArrayDataset(rng.standard_normal((8, 3)).astype(numpy.float32),
                                           rng.integers(0, 2, 8)), batch_size=4)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), optimizer, lr_schedule=StepLR(0.1, 1, 0.5), quiet=True)
    trainer.fit(loader, epochs=1)
    # Two steps: the last one ran at t = 1, half of each group's initial lr.
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.05, 0.01])


# --- state dicts and checkpoints ------------------------------------------------------------


def _grouped_trainer(checkpoint_path):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    named = list(model.named_parameters())
    optimizer = nn.optim.AdamW([{"params": [p for n, p in named if n.endswith("weight")], "amsgrad": True},
                                {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0,
                                 "lr": 0.005}], lr=0.01)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(label_smoothing=0.1), optimizer,
                         lr_schedule=CosineAnnealingLR(0.01, total=6, min_lr=0.001), checkpoint_path=checkpoint_path,
                         quiet=True)
    rng = numpy.random.default_rng(1)
    loader = nn.DataLoader(nn.ArrayDataset(rng.standard_normal((8, 3)).astype(numpy.float32),
                                           rng.integers(0, 2, 8)), batch_size=4, shuffle=True, seed=2)
    return model, trainer, loader


def test_a_trainer_resumed_with_groups_and_amsgrad_ends_where_an_uninterrupted_run_does(tmp_path):
    model, trainer, loader = _grouped_trainer(tmp_path / "whole.npz")
    trainer.fit(loader, epochs=3)
    stopped_model, stopped, loader = _grouped_trainer(tmp_path / "stopped.npz")
    stopped.fit(loader, epochs=1)
    resumed_model, resumed, loader = _grouped_trainer(tmp_path / "resumed.npz")
    resumed.fit(loader, epochs=3, resume_from=tmp_path / "stopped.npz")
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        numpy.testing.assert_array_equal(p.data, q.data)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in trainer.optimizer.param_groups]



def _train_with(optimizer, params, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        for p in params:
            p.grad += numpy.cos(2 * p.data)
        optimizer.step()


def _grouped_adam(params):
    return nn.optim.Adam(_groups(params, [{"amsgrad": True}, {"lr": 0.02, "weight_decay": 0.0}]), lr=0.05,
                         weight_decay=0.1)


def test_state_dict_with_groups_and_amsgrad_continues_identically(tmp_path):
    params = [nn.Parameter(array) for array in _initial()]
    optimizer = _grouped_adam(params)
    _train_with(optimizer, params, 2)
    model = nn.Sequential()
    nn.save_checkpoint(tmp_path / "run.npz", model, optimizer)
    saved_data = [p.data.copy() for p in params]
    _train_with(optimizer, params, 3)

    resumed_params = [nn.Parameter(array) for array in saved_data]
    resumed = nn.optim.Adam(_groups(resumed_params, [{"amsgrad": True}, {}]), lr=1.0)  # the saved values win
    nn.load_checkpoint(tmp_path / "run.npz", model, resumed)
    assert [g["lr"] for g in resumed.param_groups] == [0.05, 0.02]
    assert [g["weight_decay"] for g in resumed.param_groups] == [0.1, 0.0]
    assert "max_exp_avg_sq" in resumed.state[0]
    _train_with(resumed, resumed_params, 3)
    for p, q in zip(params, resumed_params):
        numpy.testing.assert_array_equal(p.data, q.data)


def test_state_dict_of_other_groups_is_refused():
    params = [nn.Parameter(array) for array in _initial()]
    state = _grouped_adam(params).state_dict()
    with pytest.raises(ValueError, match=r"parameter groups of sizes \[2, 2\] but this optimizer's groups have "
                                         r"sizes \[4\]"):
        nn.optim.Adam(params).load_state_dict(state)


def test_a_state_dict_saved_without_groups_still_loads():
    params = [nn.Parameter(array) for array in _initial()]
    optimizer = nn.optim.SGD(params, lr=0.3, momentum=0.9)
    _train_with(optimizer, params, 1)
    state = optimizer.state_dict()
    del state["param_groups"]
    resumed = nn.optim.SGD(params, lr=1.0)
    resumed.load_state_dict(state)
    assert resumed.lr == 0.3 and resumed.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("optimizer_class", [nn.optim.Adam, nn.optim.AdamW])
def test_amsgrad_on_each_array_module(xp, optimizer_class):
    histories = []
    for module in (numpy, xp):
        param = nn.Parameter(module.asarray(numpy.array([1.0, -2.0, 0.5], dtype=numpy.float32)))
        optimizer = optimizer_class([param], lr=0.1, amsgrad=True, maximize=True)
        for g in ([0.5, -1.0, 2.0], [-3.0, 0.2, 0.1], [0.1, 0.4, -0.6]):
            optimizer.zero_grad()
            param.grad += module.asarray(numpy.array(g, dtype=numpy.float32))
            optimizer.step()
        histories.append(backend.to_numpy(param.data))
    numpy.testing.assert_allclose(histories[1], histories[0], rtol=1e-6)


# --- errors -------------------------------------------------------------------------------


def test_a_parameter_given_twice_is_refused():
    p, q = nn.Parameter(numpy.zeros(2)), nn.Parameter(numpy.zeros(3))
    with pytest.raises(ValueError, match=r"got the same Parameter\(shape=\(2,\), dtype=float64\) twice: as "
                                         r"parameter 0 of group 0 and as parameter 2 of group 0"):
        nn.optim.SGD([p, q, p], lr=0.1)
    with pytest.raises(ValueError, match="as parameter 0 of group 0 and as parameter 0 of group 1"):
        nn.optim.Adam([{"params": [p]}, {"params": [p, q]}])


def test_a_layer_used_twice_lists_its_parameters_once_so_the_optimizer_takes_them():
    tied = nn.Linear(3, 3)
    first = nn.Linear(2, 3)
    model = nn.Sequential(first, tied, nn.ReLU(), tied, nn.Linear(3, 1))
    assert [id(p) for p in model.parameters()] == [id(p) for p in (first.weight, first.bias, tied.weight, tied.bias,
                                                                   model[4].weight, model[4].bias)]
    assert len(list(model.named_parameters())) == 8  # every name, for checkpoints
    assert len(nn.optim.SGD(model.parameters(), lr=0.1).params) == 6


def test_groups_that_make_no_sense_are_refused():
    p, q = nn.Parameter(numpy.zeros(2)), nn.Parameter(numpy.zeros(3))
    with pytest.raises(ValueError, match=r"SGD parameter group 1 has unknown options \['betas'\]; SGD options are"):
        nn.optim.SGD([{"params": [p]}, {"params": [q], "betas": (0.9, 0.99)}], lr=0.1)
    with pytest.raises(ValueError, match="Adam parameter group 1 weight_decay must be >= 0, got -1"):
        nn.optim.Adam([{"params": [p]}, {"params": [q], "weight_decay": -1}])
    with pytest.raises(ValueError, match="SGD parameter group 0 has no 'params' entry"):
        nn.optim.SGD([{"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="a mix of parameters and parameter groups"):
        nn.optim.SGD([p, {"params": [q]}], lr=0.1)
    with pytest.raises(TypeError, match="Adam parameter group 0 parameter 1 is a ndarray, not a Parameter"):
        nn.optim.Adam([{"params": [p, numpy.zeros(2)]}])
    with pytest.raises(ValueError, match="SGD parameter group 1: Nesterov momentum needs momentum > 0"):
        nn.optim.SGD([{"params": [p]}, {"params": [q], "nesterov": True}], lr=0.1, momentum=0.0)


def test_one_lr_for_groups_with_different_rates_is_refused():
    p, q = nn.Parameter(numpy.zeros(2)), nn.Parameter(numpy.zeros(3))
    optimizer = nn.optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.01}], lr=0.1)
    assert optimizer.lr == 0.1
    with pytest.raises(ValueError, match=r"the 2 parameter groups have different learning rates \[0.1, 0.01\]"):
        optimizer.lr = 0.5
    same = nn.optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1)
    same.lr = 0.5
    assert [group["lr"] for group in same.param_groups] == [0.5, 0.5]


def test_every_combination_of_sgd_options_matches_torch():
    """A sweep over the SGD options, two groups each, a few seeds: hundreds of updates compared."""
    options = itertools.product([0.0, 0.9], [0.0, 0.3], [0.0, 0.05], [False, True])
    for momentum, dampening, weight_decay, maximize in options:
        for nesterov in ([False, True] if momentum and not dampening else [False]):
            group_options = [{"weight_decay": 0.0}, {"lr": 0.03}]
            _assert_same(*_train_both("SGD", dict(lr=0.1, momentum=momentum, dampening=dampening,
                                                  weight_decay=weight_decay, nesterov=nesterov, maximize=maximize),
                                      group_options, steps=3))


# --- parameters without a gradient (zero_grad(set_to_none=True)) ------------------------------


class _Heads:
    """Two linear heads on one input; each step uses one of them, so the other gets no gradient."""

    def __init__(self):
        nn.manual_seed(3)
        self.heads = [nn.Linear(4, 2, dtype=numpy.float64), nn.Linear(4, 2, dtype=numpy.float64)]
        self.torch_params = [torch.tensor(p.data.copy(), requires_grad=True) for p in self.parameters()]

    def parameters(self):
        return [p for head in self.heads for p in head.parameters()]

    def backward(self, used: tuple[int, ...], x: numpy.ndarray, y: numpy.ndarray) -> None:
        """Loss of each head in `used` on (x, y), backpropagated in both frameworks."""
        for which in used:
            loss_fn = nn.CrossEntropyLoss()
            loss_fn(self.heads[which](x), y)
            self.heads[which].backward(loss_fn.backward())
            weight, bias = self.torch_params[2 * which:2 * which + 2]
            torch.nn.functional.cross_entropy(torch.tensor(x) @ weight + bias, torch.tensor(y)).backward()


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name, options", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
                                           ("Adam", dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
                                           ("AdamW", dict(lr=0.05))])
def test_parameters_without_a_gradient_are_skipped_as_by_torch(name, options, set_to_none):
    model = _Heads()
    ours = getattr(nn.optim, name)(model.parameters(), **options)
    theirs = getattr(torch.optim, name)(model.torch_params, **options)
    rng = numpy.random.default_rng(0)
    # Both heads first: torch's gradients start as None, which only set_to_none=True brings back.
    for used in ((0, 1), (0,), (0,), (1,), (0,), (1,), (1,)):
        ours.zero_grad(set_to_none=set_to_none)
        theirs.zero_grad(set_to_none=set_to_none)
        model.backward(used, rng.standard_normal((5, 4)), rng.integers(0, 2, 5))
        assert [p.has_grad for p in model.parameters()] == (
            [head in used for head in (0, 0, 1, 1)] if set_to_none else [True] * 4)
        ours.step()
        theirs.step()
    for p, t in zip(model.parameters(), model.torch_params):
        numpy.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-11, atol=1e-13)


def test_a_layer_backward_marks_only_its_own_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model.zero_grad(set_to_none=True)
    assert not any(p.has_grad for p in model.parameters())
    y, cache = model.forward(numpy.ones((4, 3), dtype=numpy.float32))
    model.backward(numpy.ones_like(y), cache, input_grad=False)
    assert all(p.has_grad for p in model.parameters())
    model[3].zero_grad(set_to_none=True)
    model[3].backward_weight(numpy.ones((4, 2), dtype=numpy.float32), numpy.ones((4, 3), dtype=numpy.float32))
    assert all(p.has_grad for p in model[3].parameters())


@pytest.mark.parametrize("ranks", [2, 4])
def test_optimizer_options_under_data_parallel_match_torch_on_the_global_batch(ranks):
    result = run_mpi("dp_optimizer_options.py", ranks)
    differences = re.findall(r"(\w+) ranks=\d+ max_abs_diff=([0-9.eE+-]+)", result.stdout)
    assert [name for name, _ in differences] == ["SGD", "AdamW"], result.stdout + result.stderr
    assert all(float(difference) < 1e-5 for _, difference in differences)
    for rank in range(ranks):
        assert f"rank {rank} ok" in result.stdout


@pytest.mark.parametrize("ranks", [2, 4])
def test_optimizer_options_through_a_pipeline_match_one_process(ranks):
    result = run_mpi("pipe_optimizer_options.py", ranks)
    for rank, schedule in itertools.product(range(ranks), ("1f1b", "zb-h1")):
        assert f"PIPE-OPTIONS-OK rank={rank} schedule={schedule} " in result.stdout, result.stdout + result.stderr
