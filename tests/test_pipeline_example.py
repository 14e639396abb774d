"""examples/pipeline_mlp.py under mpiexec: it learns, and its consolidated checkpoint loads into the plain model."""
import importlib.util
import re
from pathlib import Path

import numpy
import pytest

from mpi_launch import run_mpi
from packages import require
from mpiprop.network.training.checkpoint import load_checkpoint
from mpiprop.network.training.metrics import count_correct

pytestmark = pytest.mark.mpi  # every test here runs real multi-rank jobs

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pipeline_mlp.py"


def load_example():
    spec = importlib.util.spec_from_file_location("example_pipeline_mlp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_stage_example_learns_and_its_checkpoint_is_the_whole_model(tmp_path):
    require("sklearn")
    checkpoint = tmp_path / "pipe.npz"
    result = run_mpi(EXAMPLE, 2, "--epochs", "4", "--checkpoint", str(checkpoint), timeout=300)
    reported = re.findall(r"^test_accuracy=([0-9.]+)$", result.stdout, flags=re.MULTILINE)
    assert len(reported) == 1 and float(reported[0]) > 0.85, result.stdout
    example = load_example()
    model = example.build_model(128)
    load_checkpoint(checkpoint, model)
    _, (x_test, y_test) = example.load_data()
    accuracy = count_correct(model.eval().forward(x_test)[0], y_test) / len(y_test)
    assert numpy.isclose(accuracy, float(reported[0]), atol=1e-4)
