"""Trainer: epochs of mini-batch training with validation, schedules, clipping, callbacks, metrics and checkpoints."""
from __future__ import annotations

import json
import os
import sys
import time
import zlib
from typing import Any, Callable, Sequence

from mpiprop.network.backend import to_numpy
from mpiprop.network.checks import non_negative_float, positive_int
from mpiprop.network.compute.precision import precision_for_device
from mpiprop.network.layers.bce_with_logits import BCEWithLogitsLoss
from mpiprop.network.layers.cross_entropy import CrossEntropyLoss
from mpiprop.network.layers.losses import Loss
from mpiprop.network.optim.grad_scaler import GradScaler
from mpiprop.network.optim.lr_schedules import set_lr
from mpiprop.network.training.callbacks import Callback
from mpiprop.network.training.checkpoint_of_run import resume_run, save_run
from mpiprop.network.training.evaluation import combined_over_ranks, device_of_strategy, evaluate
from mpiprop.network.training.loader_checks import check_loader, global_loader_settings
from mpiprop.network.training.metrics import MetricSums
from mpiprop.network.training.non_finite import POLICIES, NonFiniteError
from mpiprop.network.training.preemption import PreemptionWatch
from mpiprop.network.training.progress import DEFAULT_LINE_EVERY_S, print_flushed, progress_display, progress_mode
from mpiprop.network.training.ranks import check_ranks_agree
from mpiprop.network.training.run_end import StopRequest, end_line, non_finite_line, nothing_to_train
from mpiprop.network.training.run_state import RunState
from mpiprop.network.training.strategy import as_strategy
from mpiprop.network.training.update_step import UpdateStep


class Trainer:
    """Trains a model with `optimizer` on `loss_fn`, epoch by epoch, and validates after each epoch.

    The trainer talks only to a training strategy (see `network.training.strategy.TrainingStrategy`)
    and its ranks (`strategy.ranks`), never to a communicator: a plain model is
    trained in this process, `DataParallel`, `Pipeline` (also as a grid of pipelines) train it
    over MPI ranks, and every feature below works the same in each layout. Every rank runs
    `fit`; only the strategy's main rank prints, draws the progress bar, writes the metrics
    file, the plot and checkpoints. Metrics are combined over the strategy's ranks, gradient
    clipping uses the norm over every stage and replica, and checkpoints hold the whole model
    under its full parameter names, so one written in any layout resumes in any other. The run ends with one line on stderr
    that says why it ended: all epochs done, early stopping, NaN or Inf values (before the error
    propagates), or a stop requested with `request_stop` (a signal handler's, for example).

    Args:
        model: a network Layer (trained in this process), or a strategy such as
            `DataParallel(model)` or `Pipeline(model, ...)`.
        loss_fn: a mean-reduced loss, e.g. `CrossEntropyLoss()`.
        optimizer: e.g. `optim.SGD(model.parameters(), lr=0.1, momentum=0.9)`.
        lr_schedule: callable t -> learning rate (see `mpiprop.network.optim.lr_schedules`), set before each update
            in every parameter group (by `lr_schedules.set_lr`).
        schedule_per: "step" (t counts optimizer steps) or "epoch" (t counts epochs).
        clip_grad_norm: when given, clip the gradients' total 2-norm (over the whole model) to this value
            before each update.
        callbacks: `Callback` objects, e.g. `EarlyStopping()`.
        accuracy: also report accuracy; by default for CrossEntropyLoss and BCEWithLogitsLoss.
        checkpoint_path: write a checkpoint here after each epoch and when training is stopped
            (the same path on every rank; the main rank writes it, with every rank's random state).
        checkpoint_every: also write it every this many optimizer steps (None: only per epoch).
            With a checkpoint path, SIGTERM or SIGUSR1 at any moment of `fit` makes every rank finish
            its step and the next (or, after the last step, the rest of `fit`), write the checkpoint
            and raise `Preempted` (a SystemExit with status 75); resuming from it continues exactly.
        non_finite: what a step with a NaN or Inf output, loss or gradient does: "raise" a
            NonFiniteError naming the step, rank, stage and layer, or "skip" the update (on every
            rank alike, decided on gradients agreed over the stages; after 20 skips in a row it raises).
        metrics_path: write one JSON line of metrics per epoch here.
        plot_path: save a PNG of the training curves here at the end of `fit` (needs matplotlib).
        average_metrics: combines metric sums over ranks: it gets this rank's dict of sums and must
            return the same keys, each summed over ranks or each averaged (only ratios are used).
            The default sums over the strategy's ranks in rank order (for one process: its input).
        quiet: print nothing and show no progress.
        progress: None: a tqdm bar per epoch when stderr is a terminal and tqdm is installed,
            otherwise (stderr is a pipe, as under mpiexec) plain lines on stderr; True: the bar;
            False: nothing.
        progress_every: with plain lines, the least seconds between two (0: one after every batch).
        print_fn: where the per-epoch JSON lines are printed (by default stdout, flushed at once).
        precision: how the layers' products are computed: "fp32" (default), or on a GPU "tf32",
            "bf16-mixed" or "fp16-mixed" (float32 weights and optimizer state, half-precision
            products; fp16 scales the loss with `grad_scaler`, skipping steps whose scaled
            gradients overflow). See `mpiprop.network.compute.precision`.
        grad_scaler: the loss scaler (default: a GradScaler() for "fp16-mixed", none otherwise; one
            given here scales the loss in any precision); its state is kept in checkpoints.

    Raises:
        ValueError: for a precision the model's device cannot use (all but "fp32" on the CPU); on every
            rank, when the ranks' optimizers (class, hyperparameters), losses or settings above differ
            (construction is collective with a distributed strategy).
    """


    def __init__(self, model: Any, loss_fn: Loss, optimizer: Any, *, lr_schedule: Callable[[int], float] | None = None,
                 schedule_per: str = "step", clip_grad_norm: float | None = None,
                 callbacks: Sequence[Callback] = (), accuracy: bool | None = None,
                 checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                 non_finite: str = "raise", metrics_path: str | os.PathLike | None = None,
                 plot_path: str | os.PathLike | None = None,
                 average_metrics: Callable[[MetricSums], MetricSums] | None = None,
                 quiet: bool = False, progress: bool | None = None, progress_every: float = DEFAULT_LINE_EVERY_S,
                 print_fn: Callable[[str], Any] = print_flushed, precision: str = "fp32",
                 grad_scaler: GradScaler | None = None):
        _check_settings(loss_fn, schedule_per, non_finite, lr_schedule, callbacks)
        self.model, self.loss_fn, self.optimizer = as_strategy(model), loss_fn, optimizer
        self.ranks = self.model.ranks
        self.lr_schedule, self.schedule_per = lr_schedule, schedule_per
        self.callbacks = list(callbacks)
        self.accuracy = isinstance(loss_fn, (CrossEntropyLoss, BCEWithLogitsLoss)) if accuracy is None else accuracy
        self.checkpoint_path, self.metrics_path, self.plot_path = checkpoint_path, metrics_path, plot_path
        self.checkpoint_every = None if checkpoint_every is None else positive_int(checkpoint_every, "checkpoint_every")
        self.non_finite, self.quiet, self.print_fn = non_finite, bool(quiet), print_fn
        self._combine = combined_over_ranks(self.ranks, average_metrics)
        self._progress = progress_display(progress_mode(progress, self.ranks.is_main, self.quiet), progress_every)
        self._device = device_of_strategy(self.model)
        self.precision = precision_for_device(precision, self._device)
        self.grad_scaler = grad_scaler if grad_scaler is not None else (
            GradScaler() if self.precision.loss_scaling else None)
        clip = None if clip_grad_norm is None else non_negative_float(clip_grad_norm, "clip_grad_norm")
        self.update = UpdateStep(self.model, optimizer, loss_fn, precision=self.precision, grad_scaler=self.grad_scaler,
                                 clip_grad_norm=clip, lr_schedule=lr_schedule, schedule_per=schedule_per,
                                 non_finite=non_finite, accuracy=self.accuracy)
        self.state = RunState()
        self._preemption = PreemptionWatch(enabled=False)
        getattr(self.ranks, "check_agreement", lambda owner, settings: None)("Trainer", {
            "optimizer": optimizer, "loss_fn": loss_fn, "lr_schedule": lr_schedule, "schedule_per": schedule_per,
            "clip_grad_norm": clip, "precision": self.precision.name, "grad_scaler": self.grad_scaler,
            "non_finite": non_finite, "checkpoint_every": self.checkpoint_every})

    # --- what callbacks and scripts read ----------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on the strategy's main rank, the one that prints and writes files."""
        return self.ranks.is_main

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished epoch."""
        return self.state.history

    @property
    def epoch(self) -> int:
        """The epoch in progress (0-based)."""
        return self.state.epoch

    @property
    def batch(self) -> int:
        """Batches done in the epoch in progress."""
        return self.state.batch

    @property
    def step(self) -> int:
        """Training steps over the whole run, skipped ones included."""
        return self.state.step

    @property
    def stop_training(self) -> bool:
        """Set it to stop after the current batch (`request_stop` also says why)."""
        return self.state.stop_training

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        self.state.stop_training = bool(value)

    @property
    def stop_request(self) -> StopRequest | None:
        """Why the run stopped before its last epoch (a `StopRequest`), or None while nothing asked it to."""
        return self.state.stop_request

    def request_stop(self, why: str, final: bool = False) -> None:
        """Stop after the current batch, and end the run's last line with `why`.

        Callbacks call it, and so can a signal handler in one process (`signal.signal(signal.SIGTERM,
        lambda number, frame: trainer.request_stop("stopped by SIGTERM"))`). With several ranks every
        rank must request the stop at the same batch, which a signal cannot promise: there, give the
        Trainer a `checkpoint_path` and leave SIGTERM and SIGUSR1 to it (see `fit`: all ranks then
        agree on the step after which they stop).

        Args:
            why: what stopped the run, e.g. "stopped by SIGTERM".
            final: the run is complete (early stopping): resuming it trains only when asked for
                more epochs. Otherwise resuming goes on where it stopped.
        """
        self.state.stop_training = True
        if self.state.stop_request is None:
            self.state.stop_request = StopRequest(why, final)

    # --- the loop -------------------------------------------------------------------
    def fit(self, train_loader: Any, epochs: int, val_loader: Any = None,
            resume_from: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        """Train until `epochs` epochs are done in total (counting those before a resume) or a callback stops it.

        Args:
            train_loader: a `DataLoader` (anything with `batches(epoch, start)` and `len()`).
            epochs: total number of epochs.
            val_loader: evaluated after each epoch ("val_loss", "val_accuracy" in the records).
            resume_from: a checkpoint written by a Trainer: model, optimizer, RNG, position in the
                data, history and callback states are restored, so the run goes on exactly as if
                it had not stopped. When that run had ended (all its epochs done, or stopped early
                for good) and `epochs` is no more than it was asked for, nothing is trained: the
                last line says so and the callbacks' `on_fit_end` still runs (restoring the best weights).

        Returns:
            The history: one record per epoch, e.g. {"epoch": 1, "step": 36, "lr": 0.1, "loss": ...,
            "accuracy": ..., "val_loss": ..., "val_accuracy": ..., "time": seconds}.

        Raises:
            ValueError: for an empty loader, or one sharded for another rank.
            CheckpointError: when `resume_from` does not fit this model, optimizer, callbacks or loader.
            Preempted: after a preemption signal, once the checkpoint is written (see `checkpoint_every`).
        """
        epochs = positive_int(epochs, "epochs")
        check_loader(train_loader, "train_loader", self.model)
        if val_loader is not None:
            check_loader(val_loader, "val_loader", self.model, allow_empty=True)
        self.state = RunState(epochs=epochs, loader_settings=global_loader_settings(train_loader))
        self._device = device_of_strategy(self.model)
        check_ranks_agree(self.ranks, "settings", {
            "epochs": epochs, "resume": resume_from is not None, "checkpoint": self.checkpoint_path is not None,
            "checkpoint_every": self.checkpoint_every, "non_finite": self.non_finite, "batches": len(train_loader)})
        self._preemption = PreemptionWatch(self.checkpoint_path is not None)
        with self._preemption:
            ended_before = None if resume_from is None else self._resume(os.fspath(resume_from), epochs)
            self._rewrite_metrics_file()
            if ended_before is None:
                self._run_epochs(train_loader, epochs, val_loader)
            self._finish_fit(ended_before is not None)
        self._report_end(ended_before or end_line(self.state.epoch, self.state.batch, epochs, self.state.stop(),
                                                  self.checkpoint_path))
        return self.state.history

    def _resume(self, path: str, epochs: int) -> str | None:
        """Restore the run saved at `path`; the line that ends the run when it has nothing left to train."""
        saved = resume_run(path, self.model, self.optimizer, self.state, self.callbacks, self.grad_scaler,
                           scheduled_lr=self.lr_schedule is not None)
        check_ranks_agree(self.ranks, "resumed state", {"epoch": self.state.epoch, "batch": self.state.batch,
                                                        "step": self.state.step, "weights_crc32": self._digest()})
        return nothing_to_train(saved, epochs, path)

    def _run_epochs(self, train_loader: Any, epochs: int, val_loader: Any) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(self)
        try:
            while self.state.epoch < epochs and not self.state.stop_training:
                if not self._train_epoch(train_loader, epochs):
                    break
                self._end_epoch(val_loader)
        except NonFiniteError as error:
            self._report_end(non_finite_line(error))
            raise

    def _finish_fit(self, nothing_trained: bool) -> None:
        """The callbacks' end and the plot; then a preemption signal that came after the last step stops the run
        (every rank alike), its checkpoint written."""
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if self.plot_path is not None and self.is_main and self.state.history:
            from mpiprop.network.training.plots import plot_history
            plot_history(self.state.history, self.plot_path)
        if self._preemption.agreed_now(self.ranks):
            if nothing_trained:  # else the last epoch's or the stop's checkpoint holds the run as it ended
                self._save_checkpoint()
            self._stop_for_preemption(f"the last step, step {self.state.step}")

    def _report_end(self, line: str) -> None:
        if self.is_main and not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def _train_epoch(self, loader: Any, epochs: int) -> bool:
        """Run the rest of the current epoch; False when a callback stopped training inside it."""
        state = self.state
        if state.batch == 0:
            state.epoch_started = time.perf_counter()
            for callback in self.callbacks:
                callback.on_epoch_start(self, state.epoch)
        if self.lr_schedule is not None and self.schedule_per == "epoch":
            set_lr(self.optimizer, self.lr_schedule, state.epoch)
        self.model.train()
        batches = self._progress(loader.batches(state.epoch, start=state.batch), len(loader) - state.batch,
                                 f"epoch {state.epoch + 1}/{epochs}")
        for inputs, targets in batches:
            loss = self.train_step(inputs, targets)
            state.batch += 1
            for callback in self.callbacks:
                callback.on_batch_end(self, state.step, loss)
            if state.stop_training:
                self._save_checkpoint()
                return False
            if self.checkpoint_every and state.step % self.checkpoint_every == 0 and state.batch < len(loader):
                self._save_checkpoint()
            if self._preemption.agreed(self.ranks):
                self._save_checkpoint()
                self._stop_for_preemption(f"step {state.step}")
        return True

    def train_step(self, inputs: Any, targets: Any) -> float:
        """One update on one batch (see `UpdateStep`); returns this rank's loss.

        Raises:
            NonFiniteError: for a NaN or Inf output, loss or gradient when `non_finite` is "raise".
        """
        return self.update.run(inputs, targets, self.state, self._device)

    def _end_epoch(self, val_loader: Any) -> None:
        state = self.state
        record: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "lr": float(self.optimizer.lr)}
        record.update(state.train_totals.result(self._combine))
        if self.non_finite == "skip":
            record["skipped_steps"] = state.skipped_this_epoch
        if val_loader is not None:
            record.update(self.evaluate(val_loader, prefix="val_"))
        record["time"] = time.perf_counter() - state.epoch_started
        state.history.append(record)
        for callback in self.callbacks:
            callback.on_epoch_end(self, state.epoch, record)
        state.next_epoch()
        self._save_checkpoint()
        self._log(record)

    def evaluate(self, loader: Any, prefix: str = "") -> dict[str, float]:
        """Loss (and accuracy) over all of `loader`'s samples, combined over ranks; the model is left in eval mode.

        Sums of losses and counts are combined, so the result is the exact per-sample mean
        however the samples are split into batches and shards (rows that uneven="pad" repeats
        count once).
        """
        return evaluate(self.model, loader, self.loss_fn, accuracy=self.accuracy, precision=self.precision,
                        combine=self._combine, prefix=prefix)

    # --- files ----------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        line = json.dumps(record)
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as stream:
                stream.write(line + "\n")
        if not self.quiet:
            self.print_fn(line)

    def _rewrite_metrics_file(self) -> None:
        """Start the metrics file afresh, with the history of a resumed run."""
        if self.metrics_path is None or not self.is_main:
            return
        with open(self.metrics_path, "w") as stream:
            stream.writelines(json.dumps(record) + "\n" for record in self.state.history)

    def _stop_for_preemption(self, where: str) -> None:
        """Raise `Preempted` on every rank once the main rank has written the checkpoint: a launcher that ends
        the job at the first non-zero exit (Open MPI's) must not cut the write short."""
        self.ranks.gather(None)
        raise self._preemption.stop(self.ranks.rank, where, os.fspath(self.checkpoint_path))

    def _save_checkpoint(self) -> None:
        """The main rank writes the checkpoint; every rank contributes its part (collective)."""
        if self.checkpoint_path is not None:
            save_run(os.fspath(self.checkpoint_path), self.model, self.optimizer, self.state, self.callbacks,
                     self.grad_scaler)

    def _digest(self) -> list[int]:
        """CRC32 of the weights of each part of the model (the same list on every replica)."""
        digest = 0
        for p in self.model.parameters():
            digest = zlib.crc32(to_numpy(p.data).tobytes(), digest)
        return self.ranks.gather_model(digest)


def _check_settings(loss_fn: Loss, schedule_per: str, non_finite: str, lr_schedule: Any,
                    callbacks: Sequence[Callback]) -> None:
    """Raise for a Trainer setting outside what it accepts, naming the value."""
    if schedule_per not in ("step", "epoch"):
        raise ValueError(f"schedule_per must be 'step' or 'epoch', got {schedule_per!r}")
    if non_finite not in POLICIES:
        raise ValueError(f"non_finite must be one of {POLICIES}, got {non_finite!r}")
    if getattr(loss_fn, "reduction", "mean") != "mean":
        raise ValueError(f"the Trainer averages the loss over samples and needs loss_fn with reduction='mean', "
                         f"got reduction={loss_fn.reduction!r}")
    if lr_schedule is not None and not callable(lr_schedule):
        raise TypeError(f"lr_schedule must be callable (t -> learning rate), got {type(lr_schedule).__name__}")
    for index, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"callback {index} is a {type(callback).__name__}, not a network.callbacks.Callback")

