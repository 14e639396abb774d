"""The training contract and what the Trainer promises in every layout: one Protocol checked at construction, ranks
deciding alike (loss scaling, non-finite steps), exact evaluation of padded shards, one copy of each array in a
checkpoint, and preemption honoured after the last step."""
import os
import re
import signal
import subprocess
import sys
import zipfile

import pytest

import mpiprop.network as nn
from mpiprop.network.training.callbacks import EarlyStopping
from mpiprop.network.training.ranks import OneProcess, Ranks
from mpiprop.network.training.strategy import TrainingStrategy, protocol_members
from mpi_launch import run_mpi

TIMEOUT_S = 180  # generous for an oversubscribed machine; a hang still fails
SCRIPT = "trainer_contract.py"


def test_the_contract_is_one_protocol_and_every_layout_has_each_member():
    assert protocol_members(TrainingStrategy) == ["train_step", "predict", "parameters", "named_parameters", "train",
                                                  "eval", "state_dict", "load_state_dict", "state_shapes",
                                                  "locate_non_finite", "ranks", "last_output"]
    assert set(protocol_members(Ranks)) == {"rank", "size", "is_main", "data_shard", "position", "gather",
                                            "gather_model", "join", "cut", "counted_once", "max_later"}
    from mpiprop.distributed.data_parallel.data_parallel import DataParallel
    from mpiprop.distributed.data_parallel.data_parallel_ranks import DataParallelRanks
    from mpiprop.distributed.pipeline.pipeline import Pipeline
    from mpiprop.distributed.pipeline.pipeline_ranks import PipelineRanks
    for layout in (nn.LocalStrategy, DataParallel, Pipeline):
        lacking = [name for name in protocol_members(TrainingStrategy)
                   if name not in ("ranks", "last_output") and not callable(getattr(layout, name, None))]
        assert lacking == [], (layout, lacking)
    for ranks in (OneProcess, DataParallelRanks, PipelineRanks):
        assert [name for name in protocol_members(Ranks) if not hasattr(ranks, name)] == [], ranks
    assert not issubclass(DataParallel, nn.LocalStrategy)


class RanksWithoutJoin(OneProcess):
    join = None


def test_a_layout_lacking_a_member_fails_at_construction_naming_it():
    strategy = nn.LocalStrategy(nn.Sequential(nn.Linear(2, 2)))
    strategy.ranks = RanksWithoutJoin()
    with pytest.raises(TypeError, match=r"a LocalStrategy lacks \['ranks.join'\]"):
        nn.Trainer(strategy, nn.CrossEntropyLoss(), None)
    del strategy.ranks
    with pytest.raises(TypeError, match=r"a LocalStrategy lacks \['ranks'\]"):
        nn.Trainer(strategy, nn.CrossEntropyLoss(), None)


def test_a_temporary_of_another_checkpoint_survives_a_write_and_a_stale_one_of_its_own_goes(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    in_flight = tmp_path / f".ckpt.npz.best.{os.getpid()}.abcd1234.tmp"
    in_flight.write_bytes(b"being written")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ckpt.npz.{int(gone.stdout)}.x1y2z3w4.tmp"
    stale.write_bytes(b"left by a killed write")
    nn.save_checkpoint(tmp_path / "ckpt.npz", model)
    assert sorted(os.listdir(tmp_path)) == sorted([in_flight.name, "ckpt.npz"])


@pytest.mark.mpi
@pytest.mark.parametrize("scenario, marker", [("scaler-skip", "SCALER-SKIP-OK"), ("scaler-raise", "SCALER-RAISE-OK")])
def test_a_nan_in_one_ranks_batch_is_decided_alike_by_every_rank_with_a_loss_scaler(tmp_path, scenario, marker):
    result = run_mpi(SCRIPT, 2, scenario, str(tmp_path), timeout=TIMEOUT_S)
    assert sorted(re.findall(rf"{marker} rank=(\d)", result.stdout)) == ["0", "1"], result.stdout + result.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_evaluation_of_a_padded_loader_counts_each_sample_once(tmp_path, ranks):
    result = run_mpi(SCRIPT, ranks, "eval-pad", str(tmp_path), timeout=TIMEOUT_S)
    found = re.findall(r"EVAL-PAD-OK rank=(\d)", result.stdout)
    assert sorted(found) == [str(rank) for rank in range(ranks)], result.stdout + result.stderr


@pytest.mark.mpi
def test_a_checkpoint_holds_one_copy_of_the_best_weights_whatever_the_ranks(tmp_path):
    sizes = {}
    for ranks in (1, 2):
        result = run_mpi(SCRIPT, ranks, "best-once", str(tmp_path), timeout=TIMEOUT_S)
        assert "BEST-ONCE-OK rank=0" in result.stdout, result.stdout + result.stderr
        path = tmp_path / f"best-{ranks}.npz"
        with zipfile.ZipFile(path) as archive:
            best = [name for name in archive.namelist() if "best_weights" in name]
        assert len(best) == 4, best  # two weights and two biases, once
        sizes[ranks] = path.stat().st_size
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.5), quiet=True,
                         callbacks=[EarlyStopping(patience=5)])
    assert trainer.fit(_loader(), 2, _loader(), resume_from=tmp_path / "best-2.npz")[-1]["epoch"] == 2
    print(f"checkpoint bytes by ranks: {sizes}")


def _loader():
    from mpiprop.network.data.loader import ArrayDataset, DataLoader
    from mpiprop.network.data.synthetic import synthetic_classification
    x, y = synthetic_classification(16, 6, 4, seed=0)
    return DataLoader(ArrayDataset(x, y), 8)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigterm_after_the_last_step_ends_in_a_checkpoint_and_status_75(tmp_path, ranks):
    result = run_mpi(SCRIPT, ranks, "preempt-end", str(tmp_path), timeout=TIMEOUT_S, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 75 and "AFTER-FIT" not in output, (result.returncode, output)
    assert re.search(r"rank 0: preempted by SIGTERM: stopped after the last step, step 8 and wrote checkpoint", output)
    saved = nn.load_checkpoint(tmp_path / "end.npz", nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)))
    assert saved["trainer"]["step"] == 8 and saved["trainer"]["epoch"] == 2
