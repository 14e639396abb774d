"""examples/train_digits.py in every layout under mpiexec: the same outputs (metrics lines and file, plot,
checkpoint, last line), and one run resumed across layouts, tensor-parallel and 3-D ones included."""
import json
import re
from pathlib import Path

import numpy
import pytest

from mpi_launch import run_mpi
from packages import require
from mpiprop.network.training.checkpoint import load_checkpoint
from mpiprop.network.training.metrics import count_correct
from test_examples import load_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"
TIMEOUT_S = 300


def records(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_one_run_goes_on_through_pipeline_data_parallel_grid_and_tensor_parallel_layouts(tmp_path):
    require("sklearn")
    pytest.importorskip("matplotlib")
    checkpoint, metrics = tmp_path / "digits.ckpt", tmp_path / "digits.jsonl"
    files = ["--checkpoint", str(checkpoint), "--metrics-out", str(metrics)]
    legs = [(2, [], 1), (2, ["--tensor-parallel", "2"], 2), (2, ["--pipeline-stages", "2"], 3),
            (4, ["--pipeline-stages", "2"], 4), (4, ["--pipeline-stages", "2", "--tensor-parallel", "2"], 5), (1, [], 6)]
    for ranks, layout, epochs in legs:
        resume = ["--resume", str(checkpoint)] if epochs > 1 else []
        plot = tmp_path / f"curves{epochs}.png"
        result = run_mpi(EXAMPLE, ranks, "--epochs", str(epochs), *layout, *files, *resume, "--plot", str(plot),
                         timeout=TIMEOUT_S)
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        printed = records(result.stdout)
        assert [r["epoch"] for r in printed] == [epochs], result.stdout
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "step"} <= set(printed[0])
        written = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert [r["epoch"] for r in written] == list(range(1, epochs + 1)) and written[-1] == printed[0]
        assert result.stdout.strip().splitlines()[-1].startswith("test_accuracy=")
    accuracy = float(re.findall(r"^test_accuracy=([0-9.]+)$", result.stdout, flags=re.MULTILINE)[-1])
    assert accuracy > 0.85
    again = run_mpi(EXAMPLE, 1, "--epochs", "6", *files, "--resume", str(checkpoint), timeout=TIMEOUT_S)
    assert "nothing to train" in again.stderr, again.stderr
    assert again.stdout.strip().splitlines()[-1] == f"test_accuracy={accuracy:.4f}"  # the best epoch's weights again
    written = [json.loads(line) for line in metrics.read_text().splitlines()]
    if min(written, key=lambda record: record["val_loss"]) is written[-1]:  # the checkpoint holds the best weights
        example = load_example("train_digits")
        model = example.build_model(128)
        load_checkpoint(checkpoint, model)
        x_test, y_test = example.load_splits(0)["test"]
        correct = count_correct(model.eval().forward(x_test)[0], y_test)
        assert numpy.isclose(correct / len(y_test), accuracy, atol=1e-4)
