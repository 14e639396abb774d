"""Stall watchdog and rank agreement, in one process: what is recorded, what is reported, what is refused."""
import time

import pytest

import mpiprop.network as nn
from mpiprop.network.training.ranks import OneProcess
from mpiprop.distributed.reliability.waits import current_wait, waiting_in
from mpiprop.distributed.reliability.watchdog import Watchdog, start_watchdog_from_environment
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.data.synthetic import synthetic_classification


def test_waits_nest_and_unwind():
    assert current_wait() is None
    with waiting_in("barrier"):
        with waiting_in("receive of 8 float32 from rank 1 (tag 3)"):
            time.sleep(0.01)
            operation, waited = current_wait()
            assert operation == "receive of 8 float32 from rank 1 (tag 3)" and waited >= 0.01
        assert current_wait()[0] == "barrier"
    assert current_wait() is None


def test_report_names_rank_operation_limit_and_stack():
    lines = Watchdog(5, rank=3).report("allreduce of 10 float32", 5.2).splitlines()
    assert lines[0] == ("rank 3: stall: rank 3 has waited 5.2 s (limit 5 s) in allreduce of 10 float32; the rank it "
                        "waits for has died, hangs, or took another code path. Aborting all ranks.")
    assert all(line.startswith("rank 3: ") for line in lines)
    assert any("test_report_names_rank_operation_limit_and_stack" in line for line in lines)  # this very frame


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "60", True])
def test_bad_timeouts_are_refused(timeout):
    with pytest.raises(ValueError, match="stall timeout must be a positive number of seconds"):
        Watchdog(timeout, rank=0)


def test_environment_variable_must_be_a_number(monkeypatch):
    monkeypatch.setenv("MPIPROP_STALL_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"MPIPROP_STALL_TIMEOUT='soon' is not a number of seconds"):
        start_watchdog_from_environment(rank=0)
    monkeypatch.delenv("MPIPROP_STALL_TIMEOUT")
    assert start_watchdog_from_environment(rank=0) is None


class TwoRanksDisagreeing(OneProcess):
    """Stands in for rank 0 of 2 ranks whose other rank passed other settings."""
    size, data_shard = 2, (0, 2)

    def gather(self, value):
        return [value, {**value, "epochs": 7}]


class FirstOfTwoRanks(nn.LocalStrategy):
    """A strategy on rank 0 of 2 reading shard 0 of the data, its other rank disagreeing."""

    def __init__(self, module):
        super().__init__(module)
        self.ranks = TwoRanksDisagreeing()


def test_trainer_refuses_ranks_with_different_settings():
    x, y = synthetic_classification(16, 5, 3, seed=0)
    model = nn.Sequential(nn.Linear(5, 3))
    strategy = FirstOfTwoRanks(model)
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), quiet=True)
    with pytest.raises(ValueError, match=r"the ranks disagree on the trainer's settings: rank 0 has .*'epochs': 2.* "
                                         r"but rank 1 has .*'epochs': 7"):
        trainer.fit(DataLoader(ArrayDataset(x, y), 4, rank=0, world_size=2), 2)
