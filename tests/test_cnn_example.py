"""examples/train_cnn.py on tiny settings in one process and under mpiexec, and data-parallel CNN training
on 2 ranks against one process on the global batch (float64)."""
import importlib.util
import re
from pathlib import Path

import numpy
import pytest

from mpi_launch import run_mpi
from packages import require

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_cnn.py"
TINY = ["--epochs", "2", "--samples", "1000", "--quiet"]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def train_cnn():
    require("mnist1d")
    spec = importlib.util.spec_from_file_location("example_train_cnn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(text: str) -> dict[str, str]:
    """The example's summary values (samples_per_s, loss, val_loss, test_loss, test_accuracy) and `ended`."""
    values = dict(re.findall(r"\b(samples_per_s|loss|val_loss|test_loss|test_accuracy)=([0-9.]+)", text))
    values["ended"] = re.search(r"^ended: (.*)$", text, re.MULTILINE).group(1)
    return values


def test_mnist1d_run_prints_speed_losses_end_and_accuracy_last(train_cnn, capsys):
    accuracy = train_cnn.main(TINY)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1] == f"test_accuracy={accuracy:.4f}"
    values = summary(out)
    assert float(values["samples_per_s"]) > 0 and values["ended"] == "all 2 epochs done"
    assert float(values["loss"]) < 2.3  # below chance level's log(10) = 2.30 after two epochs
    assert accuracy > 0.15


def test_digits_run_learns(train_cnn, capsys):
    require("sklearn")
    accuracy = train_cnn.main(["--dataset", "digits", "--epochs", "2", "--quiet"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"test_accuracy={accuracy:.4f}"
    assert accuracy > 0.5


def test_mnist1d_is_generated_without_downloading(monkeypatch):
    require("mnist1d")
    import mnist1d.data
    from mpiprop.network.data import datasets

    def no_download(*args, **kwargs):
        raise AssertionError("load_mnist1d tried to download")

    monkeypatch.setattr(mnist1d.data.requests, "get", no_download)
    datasets._generated_mnist1d.cache_clear()
    state = numpy.random.get_state()[1].copy()
    x, y = datasets.load_mnist1d("train")
    x_test, y_test = datasets.load_mnist1d("test", dtype=numpy.float64)
    assert x.shape == (4000, 40) and x.dtype == numpy.float32 and x_test.shape == (1000, 40)
    assert x_test.dtype == numpy.float64 and y.dtype == numpy.int64 and set(numpy.unique(y)) == set(range(10))
    assert numpy.array_equal(numpy.random.get_state()[1], state), "the global numpy random state changed"
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        datasets.load_mnist1d("val")


@pytest.mark.mpi
def test_data_parallel_run_on_two_ranks_matches_one_process(train_cnn, capsys):
    one = summary(run_mpi(EXAMPLE, 1, *TINY, timeout=TIMEOUT_S).stdout)
    two = summary(run_mpi(EXAMPLE, 2, *TINY, timeout=TIMEOUT_S).stdout)
    assert two["ended"] == one["ended"] == "all 2 epochs done"
    for name in ("loss", "val_loss", "test_loss"):
        assert float(two[name]) == pytest.approx(float(one[name]), rel=1e-3), name
    assert float(two["test_accuracy"]) == pytest.approx(float(one["test_accuracy"]), abs=0.01)


@pytest.mark.mpi
def test_data_parallel_cnn_training_equals_one_process_on_the_global_batch():
    result = run_mpi("dp_cnn_equivalence.py", 2, timeout=TIMEOUT_S)
    assert result.stdout.count("max_abs_diff") == 2, result.stdout
    assert "rank 0 ok" in result.stdout and "rank 1 ok" in result.stdout


def model_arrays(path: Path) -> dict[str, numpy.ndarray]:
    with numpy.load(path, allow_pickle=True) as saved:
        return {name: saved[name] for name in saved.files if name.startswith("model/")}


@pytest.mark.mpi
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_a_two_stage_pipeline_run_ends_with_one_process_weights_in_float64(train_cnn, tmp_path, schedule):
    settings = ["--epochs", "2", "--samples", "600", "--quiet", "--dtype", "float64"]
    run_mpi(EXAMPLE, 1, *settings, "--checkpoint", tmp_path / "one.npz", timeout=TIMEOUT_S)
    result = run_mpi(EXAMPLE, 2, *settings, "--pipeline-stages", "2", "--schedule", schedule,
                     "--checkpoint", tmp_path / "pipe.npz", timeout=TIMEOUT_S)
    assert "ended: all 2 epochs done" in result.stdout
    one, pipe = model_arrays(tmp_path / "one.npz"), model_arrays(tmp_path / "pipe.npz")
    assert sorted(one) == sorted(pipe) and len(one) > 4
    for name in one:
        numpy.testing.assert_allclose(pipe[name], one[name], rtol=0, atol=1e-10, err_msg=name)
