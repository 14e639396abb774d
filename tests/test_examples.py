"""The training examples run end to end on tiny settings: digits classifier (with resume) and autoencoder."""
import importlib.util
import json
from pathlib import Path

import pytest

from packages import require

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_digits():
    require("sklearn")
    return load_example("train_digits")


def test_train_digits_prints_test_accuracy_last_and_writes_metrics(train_digits, tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    accuracy = train_digits.main(["--epochs", "2", "--metrics-out", str(metrics)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"test_accuracy={accuracy:.4f}"
    assert accuracy > 0.8
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["val_accuracy"] > 0.8


def test_train_digits_resumed_matches_uninterrupted(train_digits, tmp_path, monkeypatch):
    from mpiprop.network.training.callbacks import EarlyStopping

    class InterruptAfterFirstEpoch(EarlyStopping):
        def on_epoch_end(self, trainer, epoch, record):
            super().on_epoch_end(trainer, epoch, record)
            trainer.stop_training = True

    InterruptAfterFirstEpoch.__name__ = "EarlyStopping"  # so the resumed run's callback state fits
    arguments = ["--epochs", "3", "--quiet", "--seed", "1"]
    uninterrupted = train_digits.main(arguments)
    checkpoint = str(tmp_path / "digits.ckpt")
    with monkeypatch.context() as patch:
        patch.setattr(train_digits, "EarlyStopping", InterruptAfterFirstEpoch)
        train_digits.main(arguments + ["--checkpoint", checkpoint])
    resumed = train_digits.main(arguments + ["--checkpoint", checkpoint, "--resume", checkpoint])
    assert resumed == uninterrupted


def test_autoencoder_beats_the_mean_image_and_saves_a_png(tmp_path, capsys):
    require("sklearn")
    pytest.importorskip("matplotlib")
    autoencoder = load_example("autoencoder")
    png = tmp_path / "reconstructions.png"
    result = autoencoder.main(["--epochs", "4", "--lr", "0.02", "--quiet", "--plot-out", str(png)])
    assert result["reconstruction_mse"] < 0.8 * result["mean_image_mse"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"reconstruction_mse={result['reconstruction_mse']:.5f}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
