"""Ranks that disagree fail fast: settings checked once, collectively; waits end for peers only; misuse refused."""
from __future__ import annotations

import re
import time

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.distributed.reliability.consistency import check_agreement, check_same_model, first_disagreement
from mpiprop.distributed.reliability.settings_description import describe, layer_entries
from mpiprop.distributed.reliability.waits import current_wait_among, ranks_of_all, waiting_in
from mpiprop.network.training.ranks import OneProcess
from mpi_launch import run_mpi

ERROR_WITHIN_S = 10.0  # from reaching the disagreement to the ValueError on every rank (measured: about 0.2 s)
ENDED_WITHIN_S = 10.0  # from reaching it to the end of every process (measured: 0.2-0.3 s; 3.x s after a departure)


class Gathered:
    """A stand-in communicator whose allgather returns this rank's value and the other ranks' `others`."""

    def __init__(self, *others):
        self.others = others

    def allgather_object(self, value):
        return [value, *(other(value) if callable(other) else other for other in self.others)]


def mlp(activation=nn.ReLU, p=0.1, eps=1e-5):
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, eps=eps), activation(), nn.Dropout(p), nn.Linear(8, 2))


# --- descriptions ---------------------------------------------------------------------------------
def test_the_structure_holds_parameter_free_layers_and_their_settings_but_no_arrays():
    entries = dict(layer_entries(nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Dropout(0.3))))
    assert entries == {"model": "Sequential", "model.0": "Linear", "model.0.in_features": 4,
                       "model.0.out_features": 8, "model.1": "LeakyReLU", "model.1.negative_slope": 0.2,
                       "model.2": "Dropout", "model.2.p": 0.3, "model.2.generator": None}


def test_an_optimizer_is_described_by_its_class_and_each_groups_hyperparameters():
    model = mlp()
    groups = [{"params": model.parameters()[:2], "lr": 0.5}, {"params": model.parameters()[2:]}]
    described = describe({"optimizer": nn.optim.SGD(groups, lr=0.1, momentum=0.9)})
    assert described["optimizer"] == "SGD" and described["optimizer parameter groups"] == 2
    assert described["optimizer group 0 lr"] == 0.5 and described["optimizer group 1 lr"] == 0.1
    assert described["optimizer group 1 momentum"] == 0.9


def test_schedules_that_are_plain_functions_are_told_apart_by_their_values():
    halving, tenth = describe({"s": lambda t: 0.1 * 0.5 ** t}), describe({"s": lambda t: 0.1 * 0.1 ** t})
    assert halving["s"] == tenth["s"] == "<lambda>()"
    problem = first_disagreement([halving, tenth])
    assert problem.startswith("the ranks disagree on s values at t=0,1,2,10"), problem


def test_the_first_differing_setting_is_named_with_every_ranks_value():
    everyone = [{"a": 1, "b": 0.1}, {"a": 1, "b": 0.2}, {"a": 1, "b": 0.1}]
    assert first_disagreement(everyone) == "the ranks disagree on b: ranks 0, 2 have 0.1, rank 1 has 0.2"
    assert first_disagreement([{"a": 1}, {"a": 1, "c": "x"}]) == (
        "the ranks disagree on c: rank 0 has (not set), rank 1 has 'x'")


def test_equal_numbers_agree_whatever_their_type_but_a_flag_is_not_a_number():
    assert first_disagreement([{"cap": 4}, {"cap": 4.0}]) is None
    assert first_disagreement([{"flag": True}, {"flag": 1}]) == (
        "the ranks disagree on flag: rank 0 has True, rank 1 has 1")


@pytest.mark.parametrize("other, named", [
    (lambda: mlp(activation=nn.Tanh), "model.2: rank 0 has 'ReLU', rank 1 has 'Tanh'"),
    (lambda: mlp(p=0.2), "model.3.p: rank 0 has 0.1, rank 1 has 0.2"),
    (lambda: mlp(eps=1e-3), "model.1.eps: rank 0 has 1e-05, rank 1 has 0.001"),
])
def test_check_same_model_names_the_first_differing_layer_setting(other, named):
    theirs = other()
    mine_then_theirs = Gathered(lambda mine: (mine[0], mine[1], dict(layer_entries(theirs))))
    with pytest.raises(ValueError, match=re.escape(f"DataParallel: the ranks built different models: "
                                                   f"the ranks disagree on {named}")):
        check_same_model(mlp(), mine_then_theirs)


def test_layout_settings_are_compared_before_the_model():
    other_settings = Gathered(lambda mine: ({"schedule": "gpipe"}, *mine[1:]))
    with pytest.raises(ValueError, match=r"Pipeline: the ranks disagree on schedule: rank 0 has '1f1b', "
                                         r"rank 1 has 'gpipe'; every rank must run the same script"):
        check_same_model(mlp(), other_settings, "Pipeline", settings={"schedule": "1f1b"})


def test_check_agreement_passes_equal_settings():
    check_agreement(Gathered(lambda mine: mine), "Trainer", {"optimizer": nn.optim.SGD(mlp().parameters(), lr=0.1)})


# --- the Trainer's settings go through its strategy's ranks ------------------------------------------------
class Recording(OneProcess):
    def check_agreement(self, owner, settings):
        self.checked = (owner, describe(settings))


def test_the_trainer_asks_its_ranks_to_check_its_settings_once_at_construction():
    model = mlp()
    strategy = nn.LocalStrategy(model)
    strategy.ranks = Recording()
    nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.Adam(model.parameters(), lr=0.01), clip_grad_norm=1.0,
               lr_schedule=nn.lr_schedules.StepLR(0.01, step_size=2), non_finite="skip", quiet=True)
    owner, settings = strategy.ranks.checked
    assert owner == "Trainer"
    assert settings["optimizer"] == "Adam" and settings["optimizer lr"] == 0.01
    assert settings["clip_grad_norm"] == 1.0 and settings["non_finite"] == "skip"
    assert settings["lr_schedule"] == "StepLR(base_lr=0.01, step_size=2, gamma=0.1)"
    assert settings["precision"] == "fp32" and settings["loss_fn"].startswith("CrossEntropyLoss(")


# --- waits name their ranks ---------------------------------------------------------------------------
def test_a_wait_records_the_ranks_it_depends_on():
    with waiting_in("allreduce", ranks=[2, 3]):
        assert current_wait_among()[0::2] == ("allreduce", frozenset({2, 3}))
        with waiting_in("user's own call"):
            assert current_wait_among()[2] is None
    assert current_wait_among() is None
    assert ranks_of_all([frozenset({1}), frozenset({2})]) == {1, 2}
    assert ranks_of_all([frozenset({1}), None]) is None


# --- misuse in one process ----------------------------------------------------------------------------
def test_the_wrapped_models_own_backward_is_refused_and_dp_backward_still_works():
    model = nn.Sequential(nn.Linear(4, 3))
    dp = DataParallel(model)
    x = numpy.ones((2, 4), numpy.float32)
    dp(x)
    with pytest.raises(RuntimeError, match=r"call dp\.backward\(dout\) \(or train_step\) instead of model\.backward"):
        model.backward(numpy.ones((2, 3), numpy.float32))
    dp.backward(numpy.ones((2, 3), numpy.float32))
    assert numpy.allclose(model[0].bias.grad, 2.0)


def test_zero_without_dp_optimizer_is_refused_at_the_next_step():
    dp = DataParallel(nn.Sequential(nn.Linear(4, 3)), shard_optimizer_state=1)
    optimizer = nn.optim.SGD(dp.parameters(), lr=0.1)
    x, y = numpy.ones((2, 4), numpy.float32), numpy.zeros(2, numpy.int64)
    dp.train_step(x, y, nn.CrossEntropyLoss())
    optimizer.step()
    with pytest.raises(RuntimeError, match=r"shard_optimizer_state=1\) shards the optimizer state only in an "
                                           r"optimizer made by dp\.optimizer"):
        dp.train_step(x, y, nn.CrossEntropyLoss())


# --- real ranks ---------------------------------------------------------------------------------------
SETTINGS = [  # scenario of mpi_scripts/rank_disagreement.py, what the message must say (rank 1 differs)
    ("dp_shard_optimizer_state",
     "DataParallel: the ranks disagree on shard_optimizer_state: rank 0 has 2, rank 1 has 0"),
    ("dp_shared_memory", "DataParallel: the ranks disagree on shared_memory: rank 0 has True, rank 1 has False"),
    ("dp_compression", "DataParallel: the ranks disagree on compression: rank 0 has None, rank 1 has 'float16'"),
    ("dp_bucket_cap_mb", "DataParallel: the ranks disagree on bucket_cap_mb: rank 0 has 4, rank 1 has 0.0005"),
    ("dp_broadcast_buffers",
     "DataParallel: the ranks disagree on broadcast_buffers: rank 0 has True, rank 1 has False"),
    ("pipe_schedule", "Pipeline: the ranks disagree on schedule: rank 0 has '1f1b', rank 1 has 'gpipe'"),
    ("pipe_micro_batches", "Pipeline: the ranks disagree on micro_batches: rank 0 has 2, rank 1 has 4"),
    ("pipe_balance", "Pipeline: the ranks disagree on balance: rank 0 has (3, 3), rank 1 has (2, 4)"),
    ("model_activation", "DataParallel: the ranks built different models: the ranks disagree on model.1: "
                         "rank 0 has 'Tanh', rank 1 has 'ReLU'"),
    ("model_dropout", "the ranks disagree on model.2.p: rank 0 has 0.1, rank 1 has 0.2"),
    ("trainer_lr", "Trainer: the ranks disagree on optimizer lr: rank 0 has 0.1, rank 1 has 0.05"),
    ("trainer_optimizer", "Trainer: the ranks disagree on optimizer: rank 0 has 'Adam', rank 1 has 'SGD'"),
    ("trainer_momentum", "Trainer: the ranks disagree on optimizer momentum: rank 0 has 0.9, rank 1 has 0.0"),
    ("trainer_clipping", "Trainer: the ranks disagree on clip_grad_norm: rank 0 has None, rank 1 has 0.01"),
    ("trainer_schedule", "Trainer: the ranks disagree on lr_schedule: rank 0 has 'StepLR(base_lr=0.1, step_size=2, "
                         "gamma=0.5)', rank 1 has 'StepLR(base_lr=0.1, step_size=2, gamma=0.1)'"),
    ("tp_size", "tensor_parallel_group: the ranks disagree on size: rank 0 has 2, rank 1 has 1"),
]


@pytest.mark.mpi
@pytest.mark.parametrize("scenario, message", SETTINGS, ids=[scenario for scenario, _ in SETTINGS])
def test_ranks_with_a_different_setting_all_raise_the_same_error_at_once(scenario, message):
    result = run_mpi("rank_disagreement.py", 2, scenario, timeout=90)
    ended = time.time()
    output = result.stdout
    reached = [float(value) for value in re.findall(r"rank \d reached ([0-9.]+)", output)]
    assert len(reached) == 2, output + result.stderr
    for rank in (0, 1):
        found = re.search(rf"rank {rank} ValueError after ([0-9.]+) s: (.*)", output)
        assert found, f"rank {rank} raised nothing:\n{output}\n{result.stderr}"
        assert message in found.group(2), found.group(2)
        assert float(found.group(1)) < ERROR_WITHIN_S, found.group(0)
    assert ended - max(reached) < ENDED_WITHIN_S, f"the processes ended {ended - max(reached):.1f} s after it"


@pytest.mark.mpi
def test_a_rank_that_left_another_group_does_not_abort_a_wait_it_takes_no_part_in():
    result = run_mpi("split_groups_leave.py", 4, "--late", "6", timeout=120)
    for rank in range(4):
        assert f"rank {rank} finished" in result.stdout, result.stdout + result.stderr


@pytest.mark.mpi
def test_a_rank_that_left_its_own_group_still_aborts_the_wait_naming_it():
    result = run_mpi("split_groups_leave.py", 4, "--late", "1", "--leave", timeout=120, check=False)
    ended = time.time()
    assert result.returncode != 0
    left = float(re.search(r"rank 3 leaves ([0-9.]+)", result.stdout).group(1))
    assert ended - left < ENDED_WITHIN_S, f"the processes ended {ended - left:.1f} s after rank 3 left"
    assert "rank 2: rank 3 has left the job" in result.stderr, result.stderr
    assert "rank 0 has left" not in result.stderr and "rank 1 has left" not in result.stderr, result.stderr


@pytest.mark.mpi
def test_a_collective_call_on_one_rank_only_ends_the_job_saying_it_must_run_on_every_rank():
    result = run_mpi("misuse.py", 2, "evaluate_on_one_rank", timeout=90, check=False)
    ended = time.time()
    assert result.returncode != 0
    reached = max(float(value) for value in re.findall(r"rank \d reached ([0-9.]+)", result.stdout))
    assert ended - reached < ENDED_WITHIN_S, f"the processes ended {ended - reached:.1f} s after the call"
    assert re.search(r"rank 1 has left the job .* while rank 0 waits for it in allgather", result.stderr), result.stderr
    assert "A collective call must run on every rank of its communicator" in result.stderr, result.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("scenario, message", [
    ("model_backward", "RuntimeError: backward was called on the model that DataParallel wraps"),
    ("zero_plain_optimizer", "RuntimeError: DataParallel(shard_optimizer_state=1) shards the optimizer state only "
                             "in an optimizer made by dp.optimizer"),
])
def test_misuse_that_would_let_replicas_drift_is_refused_on_every_rank(scenario, message):
    result = run_mpi("misuse.py", 2, scenario, timeout=90)
    for rank in (0, 1):
        found = re.search(rf"rank {rank} after ([0-9.]+) s (.*)", result.stdout)
        assert found and found.group(2).startswith(message), result.stdout + result.stderr
        assert float(found.group(1)) < ERROR_WITHIN_S, found.group(0)
