"""examples/train_gpt.py runs end to end on tiny settings, in one process and data parallel over 2 ranks."""
import importlib.util
import math
import re
from pathlib import Path

import numpy
import pytest

from mpi_launch import run_mpi

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_gpt.py"
TINY = ["--max-chars", "20000", "--context", "16", "--layers", "1", "--heads", "2", "--embed-dim", "16",
        "--epochs", "2", "--windows", "64", "--val-windows", "16", "--batch-size", "8", "--warmup", "2",
        "--sample-chars", "20"]


@pytest.fixture(scope="module")
def train_gpt():
    spec = importlib.util.spec_from_file_location("example_train_gpt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_prints_losses_tokens_per_second_what_ended_it_and_a_sample(train_gpt, capsys):
    result = train_gpt.main(TINY)
    out, err = capsys.readouterr()
    assert "unigram entropy" in out and "--- sample ---" in out and "training ended: all 2 epochs done" in err
    assert len(result["history"]) == 2 and all(record["tokens_per_s"] > 0 for record in result["history"])
    assert math.isfinite(result["val_loss"]) and result["sample"].startswith("def ")
    assert len(result["sample"]) == len("def ") + 20
    assert f"val_loss={result['val_loss']:.4f}" in out


def test_the_text_is_the_same_every_time_and_another_file_can_be_given(train_gpt, tmp_path):
    text = train_gpt.standard_library_text(5000)
    assert len(text) == 5000 and text == train_gpt.standard_library_text(5000)
    path = tmp_path / "text.txt"
    path.write_text("abcdefgh" * 500)
    result = train_gpt.main(TINY + ["--text", str(path), "--sample-chars", "5"])
    assert result["unigram_entropy"] == pytest.approx(math.log(8))
    assert set(result["sample"]) <= set("abcdefgh")


def test_windows_are_inputs_and_targets_shifted_by_one(train_gpt):
    ids = numpy.arange(100)
    x, y = train_gpt.random_windows(ids, 10, 5, seed=0)
    assert x.shape == y.shape == (5, 10) and (y == x + 1).all()
    x, y = train_gpt.evenly_spaced_windows(ids, 10, 4)
    assert x[0, 0] == 0 and y[-1, -1] == 99


@pytest.mark.mpi
def test_data_parallel_over_two_ranks_matches_one_process(train_gpt, capsys):
    alone = train_gpt.main(TINY)["val_loss"]
    capsys.readouterr()
    result = run_mpi(EXAMPLE, 2, *TINY, timeout=300)
    found = re.findall(r"val_loss=([0-9.]+)", result.stdout)
    assert len(found) == 1, result.stdout
    assert float(found[0]) == pytest.approx(alone, rel=1e-4)  # printed to 4 decimals
    assert "training ended: all 2 epochs done" in result.stderr


@pytest.fixture(scope="module")
def alone_val_loss(train_gpt):
    return train_gpt.main(TINY + ["--quiet"])["val_loss"]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, flags", [(2, ["--pipeline-stages", "2"]), (2, ["--zero", "1"]), (2, ["--zero", "2"]),
                                          (2, ["--recompute"]), (4, ["--pipeline-stages", "2", "--recompute"]),
                                          (2, ["--tensor-parallel", "2"]), (4, ["--tensor-parallel", "2"]),
                                          (4, ["--tensor-parallel", "2", "--pipeline-stages", "2", "--recompute"]),
                                          (2, ["--tensor-parallel", "2", "--sequence-parallel"]),
                                          (4, ["--tensor-parallel", "2", "--sequence-parallel",
                                               "--pipeline-stages", "2", "--recompute"])],
                         ids=["2 stages", "ZeRO-1", "ZeRO-2", "recompute", "2 replicas of 2 stages, recompute",
                              "2 tensor ranks", "2 replicas of 2 tensor ranks", "2 stages x 2 tensor ranks, recompute",
                              "2 tensor ranks, sequence parallel",
                              "2 stages x 2 tensor ranks, sequence parallel, recompute"])
def test_layout_flags_match_one_process(alone_val_loss, ranks, flags):
    result = run_mpi(EXAMPLE, ranks, *TINY, *flags, timeout=300)
    found = re.findall(r"val_loss=([0-9.]+)", result.stdout)
    assert len(found) == 1, result.stdout
    assert float(found[0]) == pytest.approx(alone_val_loss, rel=1e-4)  # printed to 4 decimals
    assert "training ended: all 2 epochs done" in result.stderr


def test_pipeline_stages_that_do_not_divide_the_ranks_are_refused(train_gpt):
    with pytest.raises(SystemExit, match="must divide the 1 ranks"):
        train_gpt.main(TINY + ["--pipeline-stages", "2"])
    with pytest.raises(SystemExit, match="--pipeline-stages 1 x --tensor-parallel 2 must divide the 1 ranks"):
        train_gpt.main(TINY + ["--tensor-parallel", "2"])
    with pytest.raises(SystemExit, match="--heads 2 must be a multiple of --tensor-parallel 4"):
        train_gpt.main(TINY + ["--tensor-parallel", "4"])
