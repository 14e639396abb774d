"""Trainer: equal to a hand-written loop, exact metrics, schedules, early stopping, resume, files, wrappers."""
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.training.callbacks import Callback, EarlyStopping
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.training.non_finite import NonFiniteError
from mpiprop.network.training.ranks import OneProcess
from mpiprop.network.training.progress import ProgressLines, progress_display, progress_mode
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, LinearWarmup
from mpiprop.network.data.synthetic import synthetic_classification
from mpi_launch import run_mpi
from mpi_scripts.stop_after_step import StopAfterStep
from packages import require

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def blobs(samples=96, seed=0):
    return synthetic_classification(samples, 5, 3, seed=seed, separation=1.5)


def make_model(seed, dropout=0.0):
    nn.manual_seed(seed)
    layers = [nn.Linear(5, 12), nn.Tanh()] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(12, 3)]
    return nn.Sequential(*layers)


def weights(model):
    return {name: p.data.copy() for name, p in model.named_parameters()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert numpy.array_equal(a[name], b[name]), name


def without_time(history):
    return [{key: value for key, value in record.items() if key != "time"} for record in history]


class RecordLearningRates(Callback):
    def __init__(self):
        self.rates = []

    def on_batch_end(self, trainer, step, loss):
        self.rates.append(trainer.optimizer.lr)


def test_fit_equals_a_hand_written_loop():
    x, y = blobs()
    schedule = CosineAnnealingLR(0.2, total=12)
    model = make_model(0)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
                         lr_schedule=schedule, clip_grad_norm=0.5, quiet=True)
    trainer.fit(DataLoader(ArrayDataset(x, y), 32), epochs=4)

    reference = make_model(0)
    optimizer = nn.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9)
    loss_fn, step = nn.CrossEntropyLoss(), 0
    for _ in range(4):
        for start in range(0, 96, 32):
            optimizer.zero_grad()
            loss_fn(reference(x[start:start + 32]), y[start:start + 32])
            reference.backward(loss_fn.backward())
            nn.clip_grad_norm_(reference.parameters(), 0.5)
            optimizer.lr = schedule(step)
            optimizer.step()
            step += 1
    assert_same_weights(weights(model), weights(reference))


def test_learning_rate_follows_the_schedule_per_step_and_per_epoch():
    x, y = blobs()
    loader = DataLoader(ArrayDataset(x, y), 16)
    schedule = LinearWarmup(CosineAnnealingLR(0.1, total=10), warmup_steps=4)
    for per, expected in (("step", [schedule(t) for t in range(18)]),
                          ("epoch", [schedule(t) for t in range(3) for _ in range(6)])):
        model = make_model(0)
        recorder = RecordLearningRates()
        trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=1.0),
                             lr_schedule=schedule, schedule_per=per, callbacks=[recorder], quiet=True)
        trainer.fit(loader, epochs=3)
        assert recorder.rates == expected


def test_metrics_are_exact_means_over_samples_whatever_the_batching():
    x, y = blobs(100)
    model = make_model(3)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), quiet=True)
    whole, _ = model.forward(x)
    expected_loss = float(nn.CrossEntropyLoss()(whole, y))
    expected_accuracy = float((whole.argmax(axis=1) == y).mean())
    for batch_size in (7, 100):
        result = trainer.evaluate(DataLoader(ArrayDataset(x, y), batch_size))
        assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
        assert result["accuracy"] == expected_accuracy


@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_metrics_of_uneven_shards_combine_exactly(combine):
    x, y = blobs(100)
    model = make_model(3)
    world_size, per_rank = 3, []
    for rank in range(world_size):
        trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), quiet=True,
                             average_metrics=lambda sums: per_rank.append(sums) or sums)
        trainer.evaluate(DataLoader(ArrayDataset(x, y), 8, rank=rank, world_size=world_size, uneven="keep"))
    reduce = numpy.sum if combine == "sum" else numpy.mean
    combined = {key: float(reduce([sums[key] for sums in per_rank])) for key in per_rank[0]}
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), quiet=True,
                         average_metrics=lambda sums: combined)
    sharded = trainer.evaluate(DataLoader(ArrayDataset(x[:1], y[:1]), 1))
    single = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), quiet=True)
    expected = single.evaluate(DataLoader(ArrayDataset(x, y), 100))
    assert [s["count"] for s in per_rank] == [34, 33, 33]
    assert sharded["loss"] == pytest.approx(expected["loss"], rel=1e-6)  # batch means are float32
    assert sharded["accuracy"] == pytest.approx(expected["accuracy"], rel=1e-12)  # counts: exact up to division


class StubTrainer:
    def __init__(self):
        self.stop_training = False
        self.history = []
        self.model = make_model(0)

    def request_stop(self, why, final=False):
        self.stop_training = True


def test_early_stopping_counts_patience_and_restores_the_best_weights():
    trainer = StubTrainer()
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    stopper.on_fit_start(trainer)
    for epoch, value in enumerate([1.0, 0.8, 0.795, 0.7, 0.71, 0.705]):
        trainer.model[0].weight.data.fill(epoch)
        stopper.on_epoch_end(trainer, epoch, {"val_loss": value})
        assert trainer.stop_training == (epoch == 5)
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.7, 3, 5)
    stopper.on_fit_end(trainer)
    assert numpy.all(trainer.model[0].weight.data == 3)


def test_early_stopping_in_max_mode():
    trainer = StubTrainer()
    stopper = EarlyStopping("val_accuracy", patience=1, mode="max", min_delta=0.05, restore_best_weights=False)
    for epoch, value in enumerate([0.5, 0.6, 0.62]):
        stopper.on_epoch_end(trainer, epoch, {"val_accuracy": value})
    assert trainer.stop_training and (stopper.best, stopper.best_epoch) == (0.6, 1)


def test_early_stopping_names_a_missing_metric():
    with pytest.raises(KeyError, match="val_loader"):
        EarlyStopping().on_epoch_end(StubTrainer(), 0, {"loss": 1.0})


def test_fit_stops_early_and_ends_with_the_best_validation_loss():
    x, y = blobs(60, seed=1)
    x_val, y_val = blobs(60, seed=2)
    model = make_model(0)
    stopper = EarlyStopping(patience=2)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
                         callbacks=[stopper], quiet=True)
    history = trainer.fit(DataLoader(ArrayDataset(x, y), 10, shuffle=True), 40, DataLoader(ArrayDataset(x_val, y_val), 60))
    assert len(history) < 40 and stopper.stopped_epoch == len(history) - 1
    val_losses = [record["val_loss"] for record in history]
    assert history[stopper.best_epoch]["val_loss"] == min(val_losses)
    assert trainer.evaluate(DataLoader(ArrayDataset(x_val, y_val), 60))["loss"] == min(val_losses)


def build_run(tmp_path, seed=0, callbacks=(), checkpoint=True):
    x, y = blobs(90)
    x_val, y_val = blobs(40, seed=5)
    model = make_model(seed, dropout=0.2)
    optimizer = nn.optim.Adam(model.parameters(), lr=0.02)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), optimizer, lr_schedule=LinearWarmup(CosineAnnealingLR(0.02, 20), 4),
                         clip_grad_norm=1.0, callbacks=[EarlyStopping(patience=10), *callbacks],
                         checkpoint_path=tmp_path / "run.ckpt" if checkpoint else None,
                         metrics_path=tmp_path / "metrics.jsonl", quiet=True)
    loaders = (DataLoader(ArrayDataset(x, y), 16, shuffle=True, seed=3), DataLoader(ArrayDataset(x_val, y_val), 16))
    return trainer, loaders


@pytest.mark.parametrize("stop_step", [12, 15])
def test_stopped_and_resumed_training_is_bit_identical(tmp_path, stop_step):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    trainer, (train_loader, val_loader) = build_run(tmp_path / "a", checkpoint=False)
    expected_history = without_time(trainer.fit(train_loader, 4, val_loader))
    expected = weights(trainer.model)

    trainer, (train_loader, val_loader) = build_run(tmp_path / "b", callbacks=[StopAfterStep(stop_step)])
    trainer.fit(train_loader, 4, val_loader)
    assert trainer.step == stop_step
    trainer, (train_loader, val_loader) = build_run(tmp_path / "b", seed=99, callbacks=[StopAfterStep(-1)])
    history = trainer.fit(train_loader, 4, val_loader, resume_from=tmp_path / "b" / "run.ckpt")
    assert without_time(history) == expected_history
    assert_same_weights(weights(trainer.model), expected)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [without_time([json.loads(line)])[0] for line in lines] == expected_history


def test_resume_needs_the_same_callbacks(tmp_path):
    trainer, (train_loader, val_loader) = build_run(tmp_path)
    trainer.fit(train_loader, 1, val_loader)
    trainer.callbacks = []
    with pytest.raises(nn.CheckpointError, match=r"callbacks \['EarlyStopping'\] but this trainer has \[\]"):
        trainer.fit(train_loader, 2, val_loader, resume_from=tmp_path / "run.ckpt")


def test_metrics_lines_and_plot_on_rank_zero(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    x, y = blobs()
    model = make_model(0)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1),
                         metrics_path=tmp_path / "m.jsonl", plot_path=tmp_path / "curves.png", progress=False)
    trainer.fit(DataLoader(ArrayDataset(x, y), 32), 2, DataLoader(ArrayDataset(x, y), 32))
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert printed == written and [r["epoch"] for r in written] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "step", "time"} <= set(written[0])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class EchoingRanks(OneProcess):
    """Stands in for rank 1 of 2 ranks whose other rank passes the same values, reading shard 1 of the data."""
    rank, size, is_main, data_shard, position = 1, 2, False, (1, 2), "rank 1"

    def gather(self, value):
        return [value, value]


class SecondOfTwoRanks(nn.LocalStrategy):
    """A strategy on rank 1 of 2 reading shard 1 of the data, as DataParallel there would."""

    def __init__(self, module):
        super().__init__(module)
        self.ranks = EchoingRanks()


def test_other_ranks_print_and_write_nothing(tmp_path, capsys):
    x, y = blobs()
    model = make_model(0)
    trainer = nn.Trainer(SecondOfTwoRanks(model), nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1),
                         checkpoint_path=tmp_path / "c", metrics_path=tmp_path / "m", plot_path=tmp_path / "p.png")
    trainer.fit(DataLoader(ArrayDataset(x, y), 16, rank=1, world_size=2), 2)
    assert capsys.readouterr().out == "" and os.listdir(tmp_path) == []


class Terminal:
    def __init__(self, is_terminal):
        self.is_terminal = is_terminal

    def isatty(self):
        return self.is_terminal


def test_progress_shows_only_on_rank_zero_as_a_bar_on_a_terminal_and_as_lines_through_a_pipe(monkeypatch):
    assert progress_mode(True, main=False, quiet=False) is None
    assert progress_mode(None, main=False, quiet=False) is None
    assert progress_mode(True, main=True, quiet=True) is None
    assert progress_mode(False, main=True, quiet=False) is None
    assert progress_mode(True, main=True, quiet=False) == "bar"
    monkeypatch.setattr("sys.stderr", Terminal(False))
    assert progress_mode(None, main=True, quiet=False) == "lines"
    assert progress_mode(None, main=True, quiet=True) is None
    pytest.importorskip("tqdm")
    monkeypatch.setattr("sys.stderr", Terminal(True))
    assert progress_mode(None, main=True, quiet=False) == "bar"


def test_progress_display_refuses_an_unknown_mode_and_an_interval_that_is_no_number():
    with pytest.raises(ValueError, match="progress mode must be 'bar', 'lines' or None, got 'dots'"):
        progress_display("dots")
    with pytest.raises(TypeError, match="progress_every .* must be a number, got 'often'"):
        progress_display("lines", "often")


class CountingStrategy(nn.LocalStrategy):
    """A strategy of its own, built on LocalStrategy, that counts its backward passes."""

    def __init__(self, module):
        super().__init__(module)
        self.backward_calls = 0

    def backward(self, dout):
        self.backward_calls += 1
        super().backward(dout)


def test_a_strategy_trains_like_the_model_itself(tmp_path):
    x, y = blobs()
    loader = DataLoader(ArrayDataset(x, y), 16, shuffle=True)
    results = []
    for wrap in (False, True):
        model = make_model(0)
        wrapped = CountingStrategy(model) if wrap else model
        trainer = nn.Trainer(wrapped, nn.CrossEntropyLoss(), nn.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9),
                             checkpoint_path=tmp_path / f"{wrap}.ckpt", quiet=True)
        results.append((trainer.fit(loader, 2, loader), weights(model)))
    assert without_time(results[0][0]) == without_time(results[1][0])
    assert_same_weights(results[0][1], results[1][1])
    assert wrapped.backward_calls == 12


def test_the_trainer_names_what_a_strategy_lacks():
    with pytest.raises(TypeError, match=r"a dict lacks \['train_step'"):
        nn.Trainer({}, nn.CrossEntropyLoss(), None)


def test_fit_rejects_a_loader_for_another_rank_and_an_empty_one():
    x, y = blobs()
    model = make_model(0)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), quiet=True)
    with pytest.raises(ValueError, match=r"world_size=2 but the trainer's LocalStrategy reads shard 0 of 1"):
        trainer.fit(DataLoader(ArrayDataset(x, y), 16, world_size=2), 1)
    with pytest.raises(ValueError, match="yields no batches"):
        trainer.fit(DataLoader(ArrayDataset(x, y), 200, drop_last=True), 1)


class FakeClock:
    def __init__(self, ticks):
        self.ticks = iter(ticks)

    def __call__(self):
        return next(self.ticks)


def test_progress_lines_come_at_most_once_per_interval(capsys):
    # the clock reads: start of epoch 1, after each of its 4 batches, start of epoch 2, after each of its 2 batches
    lines = ProgressLines(10.0, clock=FakeClock([0.0, 4.0, 10.0, 15.0, 21.0, 22.0, 25.0, 40.0]))
    for epoch, batches in ((1, "abcd"), (2, "ef")):
        assert list(lines.wrap(batches, len(batches), f"epoch {epoch}/2")) == list(batches)
    assert capsys.readouterr().err.splitlines() == [
        "epoch 1/2: batch 2/4, 10.0 s", "epoch 1/2: batch 4/4, 21.0 s", "epoch 2/2: batch 2/2, 18.0 s"]


def piped_fit(capsys, epochs=2, second_rank=False, **settings):
    """Fit on 96 samples in batches of 32 with stderr captured (not a terminal); returns (trainer, stderr lines)."""
    x, y = blobs()
    model = make_model(0)
    settings = {"progress_every": 0, "print_fn": lambda line: None, **settings}
    strategy = SecondOfTwoRanks(model) if second_rank else model
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), **settings)
    shards = {"rank": 1, "world_size": 2} if second_rank else {}
    trainer.fit(DataLoader(ArrayDataset(x, y), 32, **shards), epochs)
    return trainer, capsys.readouterr().err.splitlines()


def test_through_a_pipe_rank_zero_prints_a_progress_line_per_interval_and_the_end(capsys):
    _, lines = piped_fit(capsys)
    batch_lines = [line.rsplit(",", 1)[0] for line in lines[:-1]]
    assert batch_lines == [f"epoch {e}/2: batch {b}/3" for e in (1, 2) for b in (1, 2, 3)]
    assert lines[-1] == "training ended: all 2 epochs done"
    _, lines = piped_fit(capsys, progress_every=3600)
    assert lines == ["training ended: all 2 epochs done"]
    _, lines = piped_fit(capsys, second_rank=True)
    assert lines == []
    _, lines = piped_fit(capsys, quiet=True)
    assert lines == []


class StopAtEpochEnd(Callback):
    def on_epoch_end(self, trainer, epoch, record):
        trainer.stop_training = True


def test_a_callback_that_sets_stop_training_ends_the_run_with_where_it_stopped(capsys):
    _, lines = piped_fit(capsys, progress=False, callbacks=[StopAfterStep(5)])
    assert lines == ["training ended: stopped in epoch 2 of 2, after batch 2: a callback set trainer.stop_training"]
    _, lines = piped_fit(capsys, progress=False, callbacks=[StopAtEpochEnd()])
    assert lines == ["training ended: stopped after epoch 1 of 2: a callback set trainer.stop_training"]


def test_progress_lines_come_every_30_seconds_by_default_and_a_negative_interval_is_refused():
    assert inspect.signature(nn.Trainer).parameters["progress_every"].default == 30
    model = make_model(0)
    with pytest.raises(ValueError, match=r"progress_every \(seconds between progress lines\) must be .*got -1"):
        nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), progress_every=-1)


def test_epoch_lines_reach_a_pipe_at_once(tmp_path):
    script = tmp_path / "train_then_die.py"
    script.write_text(
        "import os\n"
        "import mpiprop.network as nn\n"
        "from mpiprop.network.training.callbacks import Callback\n"
        "from mpiprop.network.data.loader import ArrayDataset, DataLoader\n"
        "from mpiprop.network.data.synthetic import synthetic_classification\n"
        "class DieInSecondEpoch(Callback):\n"
        "    def on_epoch_start(self, trainer, epoch):\n"
        "        if epoch == 1:\n"
        "            os._exit(0)  # no interpreter shutdown: what was not flushed is lost\n"
        "model = nn.Sequential(nn.Linear(5, 3))\n"
        "trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1),\n"
        "                     callbacks=[DieInSecondEpoch()])\n"
        "trainer.fit(DataLoader(ArrayDataset(*synthetic_classification(32, 5, 3, seed=0)), 16), 3)\n")
    buffered = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=buffered)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["epoch"] for line in result.stdout.splitlines()] == [1]


def test_early_stopping_ends_with_a_line_naming_the_stopping_and_the_best_epoch(capsys):
    x, y = blobs(60, seed=1)
    x_val, y_val = blobs(60, seed=2)
    model = make_model(0)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
                         callbacks=[EarlyStopping(patience=2)], progress=False, print_fn=lambda line: None)
    history = trainer.fit(DataLoader(ArrayDataset(x, y), 10, shuffle=True), 40,
                          DataLoader(ArrayDataset(x_val, y_val), 60))
    val_losses = [record["val_loss"] for record in history]
    best = val_losses.index(min(val_losses)) + 1
    assert len(history) < 40
    assert capsys.readouterr().err.splitlines() == [
        f"training ended: early stopping at epoch {len(history)}: val_loss did not improve for 2 epochs; "
        f"best epoch {best} (val_loss {min(val_losses):.4g}) restored"]


def test_non_finite_values_end_with_a_line_holding_the_error(capsys):
    x, y = blobs()
    x[40] = numpy.nan  # in the second batch
    model = make_model(0)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(NonFiniteError) as raised:
        trainer.fit(DataLoader(ArrayDataset(x, y), 32), 2)
    assert "step 2 (epoch 1, batch 2)" in str(raised.value)
    assert capsys.readouterr().err.splitlines() == [f"training ended: non-finite values: {raised.value}"]


class RaiseSignalAtStep(Callback):
    def __init__(self, step, number):
        self.step, self.number = step, number

    def on_batch_end(self, trainer, step, loss):
        if step == self.step:
            signal.raise_signal(self.number)


def test_a_signal_handler_stops_training_through_request_stop_and_the_run_resumes(tmp_path, capsys):
    trainer, (train_loader, val_loader) = build_run(tmp_path, callbacks=[RaiseSignalAtStep(8, signal.SIGUSR1)])
    trainer.quiet = False
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: trainer.request_stop("stopped by SIGUSR1"))
    try:
        trainer.fit(train_loader, 4, val_loader)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (trainer.step, len(train_loader)) == (8, 6)
    assert capsys.readouterr().err.splitlines() == [
        "training ended: stopped in epoch 2 of 4, after batch 2: stopped by SIGUSR1; "
        f"resume from {tmp_path / 'run.ckpt'} to go on"]
    resumed, (train_loader, val_loader) = build_run(tmp_path, callbacks=[RaiseSignalAtStep(-1, signal.SIGUSR1)])
    history = resumed.fit(train_loader, 4, val_loader, resume_from=tmp_path / "run.ckpt")
    assert [record["epoch"] for record in history] == [1, 2, 3, 4] and resumed.step == 24


def early_stopped_run(checkpoint, epochs, capsys, patience=2):
    x, y = blobs(60, seed=1)
    x_val, y_val = blobs(60, seed=2)
    model = make_model(0)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
                         callbacks=[EarlyStopping(patience=patience)], checkpoint_path=checkpoint, progress=False,
                         print_fn=lambda line: None)
    resume_from = checkpoint if checkpoint.exists() else None
    history = trainer.fit(DataLoader(ArrayDataset(x, y), 10, shuffle=True), epochs,
                          DataLoader(ArrayDataset(x_val, y_val), 60), resume_from=resume_from)
    return trainer, without_time(history), capsys.readouterr().err.splitlines()


def test_resuming_an_early_stopped_run_trains_only_when_asked_for_more_epochs(tmp_path, capsys):
    checkpoint = tmp_path / "run.ckpt"
    first, history, lines = early_stopped_run(checkpoint, 40, capsys)
    stopped = lines[-1].removeprefix("training ended: ")
    assert len(history) < 40 and stopped.startswith(f"early stopping at epoch {len(history)}:")

    again, again_history, lines = early_stopped_run(checkpoint, 40, capsys)
    assert again_history == history and again.step == first.step
    assert_same_weights(weights(again.model), weights(first.model))  # the best epoch's, restored
    assert lines == [f"training ended: nothing to train: the run in {checkpoint} had already ended ({stopped}); "
                     "ask for more than 40 epochs to train on"]

    more, more_history, lines = early_stopped_run(checkpoint, 41, capsys)
    assert more_history[:len(history)] == history
    assert len(more_history) >= len(history) + 2  # patience counts afresh: 2 epochs at least
    assert lines[-1].startswith("training ended: ")


def test_resuming_a_finished_run_trains_only_the_epochs_added(tmp_path, capsys):
    _, straight, _ = early_stopped_run(tmp_path / "straight.ckpt", 3, capsys, patience=10)
    checkpoint = tmp_path / "run.ckpt"
    early_stopped_run(checkpoint, 2, capsys, patience=10)
    again, history, lines = early_stopped_run(checkpoint, 2, capsys, patience=10)
    assert len(history) == 2 and again.step == 12
    assert lines == [f"training ended: nothing to train: the run in {checkpoint} had already ended "
                     "(all 2 epochs done); ask for more than 2 epochs to train on"]
    _, history, lines = early_stopped_run(checkpoint, 3, capsys, patience=10)
    assert history == straight and lines == ["training ended: all 3 epochs done"]


@pytest.mark.parametrize("ranks", [2, 4])
def test_train_digits_under_mpiexec_prints_progress_lines_through_the_pipe_and_why_it_ended(tmp_path, ranks):
    require("sklearn")
    checkpoint = tmp_path / "digits.ckpt"
    arguments = ["--epochs", "2", "--progress-every", "0", "--checkpoint", str(checkpoint)]
    buffered = {"PYTHONUNBUFFERED": ""}  # as a user's shell has it
    result = run_mpi(EXAMPLES / "train_digits.py", ranks, *arguments, env=buffered)
    records = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
    assert [record["epoch"] for record in records] == [1, 2]  # once, from rank 0
    batches = records[0]["step"]
    progress_lines = [line.rsplit(",", 1)[0] for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert progress_lines == [f"epoch {e}/2: batch {b}/{batches}" for e in (1, 2) for b in range(1, batches + 1)]
    assert result.stderr.splitlines()[-1] == "training ended: all 2 epochs done"
    accuracy = result.stdout.splitlines()[-1]
    assert accuracy.startswith("test_accuracy=")

    resumed = run_mpi(EXAMPLES / "train_digits.py", ranks, *arguments, "--resume", str(checkpoint), env=buffered)
    assert resumed.stdout.splitlines() == [accuracy]
    said = [line for line in resumed.stderr.splitlines() if not line.startswith("mpiprop: warning")]  # oversubscribed
    assert said == [f"training ended: nothing to train: the run in {checkpoint} had already "
                    "ended (all 2 epochs done); ask for more than 2 epochs to train on"]
