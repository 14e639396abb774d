"""Trainer: epochs of mini-batch training with validation, schedules, clipping, callbacks, metrics and checkpoints."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import zlib
from typing import Any, Callable, Sequence

import numpy

from mpiprop.network.compute import rng
from mpiprop.network.backend import device_of, to_device, to_numpy
from mpiprop.network.training.callbacks import Callback
from mpiprop.network.training.checkpoint import (CheckpointError, check_model_state, load_optimizer_state, merged_optimizer_state,
                                        named_optimizer_state, optimizer_parameter_names, read_checkpoint,
                                        write_checkpoint)
from mpiprop.network.checks import non_negative_float, positive_int
from mpiprop.network.optim.clipping import clip_grad_norm_, grad_power_sum
from mpiprop.network.layers.layer import Layer
from mpiprop.network.training.local_strategy import LocalStrategy
from mpiprop.network.layers.losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss
from mpiprop.network.training.metrics import MetricSums, MetricTotals, count_correct
from mpiprop.network.training.non_finite import POLICIES, NonFiniteError, grads_finite, non_finite_grads
from mpiprop.network.optim.grad_scaler import GradScaler, ScaledLoss
from mpiprop.network.compute.precision import precision_for_device, using_precision
from mpiprop.network.training.preemption import PreemptionWatch
from mpiprop.network.training.progress import DEFAULT_LINE_EVERY_S, print_flushed, progress_display, progress_mode
from mpiprop.network.training.run_end import StopRequest, end_line, non_finite_line, nothing_to_train
from mpiprop.network.optim.lr_schedules import set_lr
from mpiprop.network.training.shares import join_parts

_LOADER_SETTINGS = ("shuffle", "drop_last", "seed", "uneven")
STRATEGY_METHODS = ("train_step", "predict", "parameters", "named_parameters", "train", "eval", "state_dict",
                    "load_state_dict", "state_shapes", "stage_allgather", "merge_over_stages", "local_part",
                    "parameters_counted_once", "locate_non_finite")
MAX_SKIPS_IN_A_ROW = 20
NON_FINITE_FIX = ("lower the learning rate, set clip_grad_norm, check the data, "
                  "or pass non_finite='skip' to skip such steps")


class Trainer:
    """Trains a model with `optimizer` on `loss_fn`, epoch by epoch, and validates after each epoch.

    The trainer talks only to a training strategy (see `LocalStrategy`): a plain model is
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
            With a checkpoint path (and `comm` on several ranks), SIGTERM or SIGUSR1 during `fit`
            makes every rank finish its step and the next, write the checkpoint and raise `Preempted`
            (a SystemExit with status 75); resuming from it continues exactly.
        non_finite: what a step with a NaN or Inf output, loss or gradient does: "raise" a
            NonFiniteError naming the step, rank, stage and layer, or "skip" the update (on every
            rank alike, decided on gradients agreed over the stages; after 20 skips in a row it raises).
        metrics_path: write one JSON line of metrics per epoch here.
        plot_path: save a PNG of the training curves here at the end of `fit` (needs matplotlib).
        average_metrics: combines metric sums over ranks: it gets this rank's dict of sums and must
            return the same keys, each summed over ranks or each averaged (only ratios are used).
            The default sums over the strategy's `comm` in rank order (for one process: its input).
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
        self.model, self.loss_fn, self.optimizer = as_strategy(model), loss_fn, optimizer
        self.comm = self.model.comm
        self.rank, self.world_size = (0, 1) if self.comm is None else (self.comm.rank, self.comm.size)
        self.lr_schedule, self.schedule_per = lr_schedule, schedule_per
        self.clip_grad_norm = None if clip_grad_norm is None else non_negative_float(clip_grad_norm, "clip_grad_norm")
        self.callbacks = list(callbacks)
        self.accuracy = isinstance(loss_fn, (CrossEntropyLoss, BCEWithLogitsLoss)) if accuracy is None else accuracy
        self.checkpoint_path, self.metrics_path, self.plot_path = checkpoint_path, metrics_path, plot_path
        self.checkpoint_every = None if checkpoint_every is None else positive_int(checkpoint_every, "checkpoint_every")
        self.non_finite = non_finite
        self.average_metrics = average_metrics
        self.quiet = bool(quiet)
        self._progress = progress_display(progress_mode(progress, self.model.is_main, self.quiet), progress_every)
        self.print_fn = print_fn
        self._device = _device_of_model(self.model)
        self.precision = precision_for_device(precision, self._device)
        self.grad_scaler = grad_scaler if grad_scaler is not None else (
            GradScaler() if self.precision.loss_scaling else None)
        self._step_loss = loss_fn if self.grad_scaler is None else ScaledLoss(loss_fn, self.grad_scaler)
        self._reset()
        getattr(self.model, "check_agreement", lambda owner, settings: None)("Trainer", {
            "optimizer": optimizer, "loss_fn": loss_fn, "lr_schedule": lr_schedule, "schedule_per": schedule_per,
            "clip_grad_norm": self.clip_grad_norm, "precision": self.precision.name, "grad_scaler": self.grad_scaler,
            "non_finite": non_finite, "checkpoint_every": self.checkpoint_every})

    @property
    def is_main(self) -> bool:
        """True on the strategy's main rank, the one that prints and writes files."""
        return self.model.is_main

    def _reset(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # the epoch in progress (0-based)
        self.batch = 0  # batches done in that epoch
        self.step = 0  # training steps over the whole run, skipped ones included
        self.skipped_in_a_row = 0
        self.skipped_this_epoch = 0
        self.stop_training = False
        self.stop_request: StopRequest | None = None
        self.epochs: int | None = None  # asked of the current fit
        self._train_totals = MetricTotals()
        self._epoch_started = time.perf_counter()
        self._preemption = PreemptionWatch(enabled=False)

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
        self.stop_training = True
        if self.stop_request is None:
            self.stop_request = StopRequest(why, final)

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
        self._check_loader(train_loader, "train_loader")
        if val_loader is not None:
            self._check_loader(val_loader, "val_loader", allow_empty=True)
        self._reset()
        self.epochs = epochs
        self._loader_settings = _global_loader_settings(train_loader)
        self._device = _device_of_model(self.model)
        self._check_ranks_agree("settings", {"epochs": epochs, "resume": resume_from is not None,
                                             "checkpoint": self.checkpoint_path is not None,
                                             "checkpoint_every": self.checkpoint_every, "non_finite": self.non_finite,
                                             "batches": len(train_loader)})
        ended_before = None
        if resume_from is not None:
            saved = self._resume(os.fspath(resume_from), train_loader)
            ended_before = nothing_to_train(saved, epochs, os.fspath(resume_from))
            self._check_ranks_agree("resumed state", {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                                                      "weights_crc32": self._weights_digest()})
        self._rewrite_metrics_file()
        if ended_before is None:
            self._run_epochs(train_loader, epochs, val_loader)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if self.plot_path is not None and self.is_main and self.history:
            from mpiprop.network.training.plots import plot_history
            plot_history(self.history, self.plot_path)
        self._report_end(ended_before or end_line(self.epoch, self.batch, epochs, self._stop(), self.checkpoint_path))
        return self.history

    def _run_epochs(self, train_loader: Any, epochs: int, val_loader: Any) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(self)
        self._preemption = PreemptionWatch(self.checkpoint_path is not None
                                           and (self.world_size == 1 or self.comm is not None))
        try:
            with self._preemption:
                while self.epoch < epochs and not self.stop_training:
                    if not self._train_epoch(train_loader, epochs):
                        break
                    self._end_epoch(val_loader)
        except NonFiniteError as error:
            self._report_end(non_finite_line(error))
            raise

    def _stop(self) -> StopRequest | None:
        """Why training stopped early, or None when it ran all its epochs."""
        if self.stop_request is None and self.stop_training:
            return StopRequest("a callback set trainer.stop_training")
        return self.stop_request

    def _report_end(self, line: str) -> None:
        if self.is_main and not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def _train_epoch(self, loader: Any, epochs: int) -> bool:
        """Run the rest of the current epoch; False when a callback stopped training inside it."""
        if self.batch == 0:
            self._epoch_started = time.perf_counter()
            for callback in self.callbacks:
                callback.on_epoch_start(self, self.epoch)
        if self.lr_schedule is not None and self.schedule_per == "epoch":
            set_lr(self.optimizer, self.lr_schedule, self.epoch)
        self.model.train()
        batches = self._progress(loader.batches(self.epoch, start=self.batch), len(loader) - self.batch,
                                 f"epoch {self.epoch + 1}/{epochs}")
        for inputs, targets in batches:
            loss = self.train_step(inputs, targets)
            self.batch += 1
            for callback in self.callbacks:
                callback.on_batch_end(self, self.step, loss)
            if self.stop_training:
                self._save_checkpoint()
                return False
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.batch < len(loader):
                self._save_checkpoint()
            if self._preemption.agreed(self.comm):
                self._save_checkpoint()
                raise self._preemption.stop(self.rank, f"step {self.step}", os.fspath(self.checkpoint_path))
        return True

    def train_step(self, inputs: Any, targets: Any) -> float:
        """One update on one batch: the strategy's step (forward, loss, backward, gradients in sync),
        then clip, schedule and optimizer step; returns this rank's loss.

        Raises:
            NonFiniteError: for a NaN or Inf output, loss or gradient when `non_finite` is "raise".
        """
        x, y = to_device(inputs, self._device), to_device(targets, self._device)
        self.optimizer.zero_grad()
        with using_precision(self.precision), _overflow_expected(self.grad_scaler is not None):
            loss = self.model.train_step(x, y, self._step_loss)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.model.parameters())
        finite, power_sum = self._gradient_summary()
        if self._scaled_gradients_overflowed(loss, finite):
            self.optimizer.zero_grad()
            self.step += 1
            return loss
        if not self._step_finite(x, loss, finite):
            self.step += 1
            return loss
        output = self.model.last_output
        correct = count_correct(output, y) if self.accuracy and output is not None else None
        if self.clip_grad_norm is not None:
            clip_grad_norm_(self.model.parameters(), self.clip_grad_norm, total_norm=power_sum ** 0.5)
        if self.lr_schedule is not None and self.schedule_per == "step":
            set_lr(self.optimizer, self.lr_schedule, self.step)
        self.optimizer.step()
        self.step += 1
        if output is not None:  # a pipeline counts each sample once, on its last stage
            self._train_totals.add(loss, len(y), correct, _predictions(y))
        self.skipped_in_a_row = 0
        return loss

    def _scaled_gradients_overflowed(self, loss: float, gradients_finite: bool) -> bool:
        """With loss scaling, update the scale; True when the step must be skipped because the scaled
        gradients overflowed (a finite loss, non-finite gradients: the scale was too large)."""
        if self.grad_scaler is None or not math.isfinite(loss):
            return False
        self.grad_scaler.update(not gradients_finite)
        return not gradients_finite

    def _gradient_summary(self) -> tuple[bool, float]:
        """Whether every stage's (synchronised) gradients are finite, and the sum of their squares when clipping.

        One exchange over the stages gives every rank the same answer, so all of them skip or clip alike.
        """
        params, counted = self.model.parameters(), self.model.parameters_counted_once()
        mine = (grads_finite(params), grad_power_sum(counted) if self.clip_grad_norm is not None else 0.0)
        stages = self.model.stage_allgather(mine)
        return all(finite for finite, _ in stages), sum(power for _, power in stages)

    def _step_finite(self, x: Any, loss: float, gradients_finite: bool) -> bool:
        """False to skip a step whose gradients hold NaN or Inf; with non_finite="raise", raise instead.

        A non-finite loss sends NaN gradients backward (see `LocalStrategy.train_step`), so the
        averaged gradients, and with them the decision, are the same on every rank.
        """
        if gradients_finite and math.isfinite(loss):
            return True
        if self.non_finite == "raise":
            raise NonFiniteError(self._non_finite_message(x, loss))
        self.optimizer.zero_grad()
        self.skipped_in_a_row += 1
        self.skipped_this_epoch += 1
        if self.skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise NonFiniteError(f"{self._step_name()}: {self.skipped_in_a_row} steps in a row had NaN or Inf "
                                 "gradients and were skipped; training has diverged: lower the learning rate, set "
                                 "clip_grad_norm or check the data")
        return False

    def _non_finite_message(self, x: Any, loss: float) -> str:
        """Where the NaN or Inf came from, the same on every rank: the first layer whose output holds it
        on a rank whose loss is not finite, else the parameters whose (synchronised) gradients hold it."""
        located = None
        if not math.isfinite(loss):
            located = (f"{self._step_name()}: the model's output or loss holds NaN or Inf, first in "
                       f"{self.model.locate_non_finite(x)}; {NON_FINITE_FIX}")
        everyone = [located] if self.comm is None else self.comm.allgather_object(located)
        found = [message for message in everyone if message is not None]
        if found:
            return found[0]
        stages = self.model.stage_allgather((self.model.position, non_finite_grads(self.model.named_parameters())))
        named = [f"{name!r}" + (f" on {position}" if len(stages) > 1 else "")
                 for position, names in stages for name in names]
        averaged = " (averaged over ranks)" if self.world_size > 1 else ""
        return (f"{self._step_name()}: the gradients{averaged} of {_first_few(named)} hold NaN "
                f"or Inf; the loss on this rank was {loss:.6g}; {NON_FINITE_FIX}")

    def _step_name(self) -> str:
        return f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.batch + 1}) on {self.model.position}"

    def _end_epoch(self, val_loader: Any) -> None:
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "lr": float(self.optimizer.lr)}
        record.update(self._train_totals.result(self._combine_metrics))
        if self.non_finite == "skip":
            record["skipped_steps"] = self.skipped_this_epoch
        if val_loader is not None:
            record.update(self.evaluate(val_loader, prefix="val_"))
        record["time"] = time.perf_counter() - self._epoch_started
        self.history.append(record)
        for callback in self.callbacks:
            callback.on_epoch_end(self, self.epoch, record)
        self.epoch, self.batch, self._train_totals = self.epoch + 1, 0, MetricTotals()
        self.skipped_this_epoch = 0
        self._save_checkpoint()
        self._log(record)

    def evaluate(self, loader: Any, prefix: str = "") -> dict[str, float]:
        """Loss (and accuracy) over all of `loader`'s samples, combined over ranks; the model is left in eval mode.

        Sums of losses and counts are combined, so the result is the exact per-sample mean
        however the samples are split into batches and shards.
        """
        self.model.eval()
        device = _device_of_model(self.model)
        totals = MetricTotals()
        for inputs, targets in loader:
            x, y = to_device(inputs, device), to_device(targets, device)
            with using_precision(self.precision):
                output = self.model.predict(x)
            if output is None:  # a pipeline stage other than the last
                continue
            loss, _ = self.loss_fn.forward(output, y)
            correct = count_correct(output, y) if self.accuracy else None
            totals.add(loss, len(y), correct, _predictions(y))
        return totals.result(self._combine_metrics, prefix)

    def _combine_metrics(self, sums: MetricSums) -> MetricSums:
        """Metric sums over the strategy's ranks, added in rank order so every rank gets the same bits."""
        if self.average_metrics is not None:
            return self.average_metrics(sums)
        if self.comm is None:
            return sums
        everyone = self.comm.allgather_object(sums)
        return {key: sum(float(rank_sums[key]) for rank_sums in everyone) for key in sums}

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
            stream.writelines(json.dumps(record) + "\n" for record in self.history)

    def _save_checkpoint(self) -> None:
        """The main rank writes the checkpoint; every rank contributes its random state and its stage's state."""
        if self.checkpoint_path is None:
            return
        mine = (rng.get_rng_state(), self._train_totals.state_dict(), [c.state_dict() for c in self.callbacks],
                self._held_parameters())
        everyone = [mine] if self.comm is None else self.comm.allgather_object(mine)
        model_state = self.model.merge_over_stages({name: to_numpy(array)
                                                    for name, array in self.model.state_dict().items()})
        optimizer_state = merged_optimizer_state(named_optimizer_state(self.optimizer.state_dict(),
                                                                       self._optimizer_names()),
                                                 self.model.merge_over_stages)
        if self.is_main:
            write_checkpoint(self.checkpoint_path, model_state, optimizer_state, trainer=self._state(everyone))

    def _local_optimizer_state(self, saved: dict[str, Any] | None) -> dict[str, Any] | None:
        """A checkpoint's optimizer state with its entries by name cut to this process's parts."""
        if saved is None or not isinstance(saved.get("state"), dict):
            return saved
        return {**saved, "state": self.model.local_part(saved["state"])}

    def _optimizer_names(self) -> list[str]:
        """The full name of each of the optimizer's parameters.

        Raises:
            ValueError: when the optimizer holds parameters the strategy does not.
        """
        names = optimizer_parameter_names(self.model, self.optimizer)
        if names is None:
            raise ValueError("the optimizer holds parameters that the trained model does not; build it from "
                             "the strategy's parameters(), e.g. nn.optim.SGD(pipe.parameters(), lr=0.1)")
        return names

    def _state(self, everyone: list[tuple[dict, dict, list, list]]) -> dict[str, Any]:
        """What the trainer needs to go on; `everyone` holds each rank's (random state, metric sums, callback
        states, names of the parameters it holds)."""
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "rank_rng": [state for state, _, _, _ in everyone] if self.comm is not None else None,
            "rank_train_sums": [sums for _, sums, _, _ in everyone],
            "rank_callbacks": [states for _, _, states, _ in everyone],
            "rank_parameters": [names for _, _, _, names in everyone],
            "skipped": [self.skipped_this_epoch, self.skipped_in_a_row],
            "grad_scaler": None if self.grad_scaler is None else self.grad_scaler.state_dict(),
            "history": self.history, "epochs": self.epochs,
            "stop": None if self.stop_request is None else self.stop_request.state_dict(),
            "callbacks": [{"type": type(c).__name__} for c in self.callbacks],
            "loader": self._loader_settings,
        }

    def _resume(self, path: str, loader: Any) -> dict[str, Any]:
        """Restore the run saved at `path`; returns its trainer state."""
        saved = read_checkpoint(path, self.model)
        state = saved["meta"].get("trainer")
        if state is None:
            raise CheckpointError(f"checkpoint {path} was not written by a Trainer (its meta has no 'trainer' "
                                  "entry); load it with mpiprop.network.load_checkpoint instead")
        self._check_hyperparameters(path, saved["optimizer"])
        saved_types = [entry["type"] for entry in state["callbacks"]]
        types = [type(c).__name__ for c in self.callbacks]
        if saved_types != types:
            raise CheckpointError(f"checkpoint {path} holds the state of callbacks {saved_types} but this trainer "
                                  f"has {types}; pass the same callbacks to resume")
        if state["batch"] and state["loader"] != self._loader_settings:
            raise CheckpointError(f"checkpoint {path} stopped inside an epoch of a loader with {state['loader']} "
                                  f"but this loader has {self._loader_settings}; use the same loader settings "
                                  "(the same batch over all ranks)")
        check_model_state(path, saved["model"], self.model.state_shapes())
        load_optimizer_state(path, self._local_optimizer_state(saved["optimizer"]), self.optimizer,
                             self._optimizer_names())
        self.model.load_state_dict(saved["model"])
        rng.set_rng_state(saved["rng"])
        rank_rng = state.get("rank_rng")
        if rank_rng is not None and len(rank_rng) == self.world_size:
            rng.set_rng_state(rank_rng[self.rank])
        for callback, callback_state in zip(self.callbacks, self._own_callback_states(state)):
            callback.load_state_dict(callback_state)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.history = list(state["history"])
        rank_sums = state["rank_train_sums"] if "rank_train_sums" in state else [state["train_sums"]]
        self._train_totals.load_state_dict(self._own_train_sums(rank_sums))
        self.skipped_this_epoch, self.skipped_in_a_row = state.get("skipped", (0, 0))
        if self.grad_scaler is not None and state.get("grad_scaler") is not None:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        return state

    def _own_callback_states(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Each callback's state for this rank: its own when it holds the parameters (and shares) it held when saving; else
        rank 0's, with every mapping in it (such as EarlyStopping's best weights, split over pipeline
        stages) joined over ranks."""
        rank_callbacks = state.get("rank_callbacks")
        if rank_callbacks is None:
            return [entry["state"] for entry in state["callbacks"]]
        if len(rank_callbacks) == self.world_size and state["rank_parameters"][self.rank] == self._held_parameters():
            return rank_callbacks[self.rank]
        whole_shapes = self.model.state_shapes()
        return [_joined_over_ranks([states[index] for states in rank_callbacks], whole_shapes)
                for index in range(len(self.callbacks))]

    def _held_parameters(self) -> list[list]:
        """[name, shape] of each parameter this rank holds (a tensor-parallel share has a shape of its own)."""
        return [[name, list(p.data.shape)] for name, p in self.model.named_parameters()]

    def _own_train_sums(self, rank_sums: list[MetricSums]) -> MetricSums:
        """This rank's share of the epoch's metric sums: its own in the same layout, else the main rank holds
        them all (the combination over ranks, a sum or a mean, then gives the same ratios)."""
        if len(rank_sums) == self.world_size:
            return rank_sums[self.rank]
        if not self.is_main:
            return MetricTotals().state_dict()
        return {key: sum(float(sums[key]) for sums in rank_sums) for key in rank_sums[0]}

    def _check_hyperparameters(self, path: str, saved_optimizer: dict[str, Any] | None) -> None:
        """A resumed run goes on with the hyperparameters it stopped with, in every parameter group; a changed
        one is an error (a scheduled learning rate excepted)."""
        if saved_optimizer is None:
            return
        ours = self.optimizer.state_dict()["param_groups"]
        theirs = saved_optimizer.get("param_groups") or [saved_optimizer.get("hyperparameters", {})]
        ignored = {"params", "lr"} if self.lr_schedule is not None else {"params"}
        changed = [(index, name, _plain(saved.get(name)), _plain(value))
                   for index, (group, saved) in enumerate(zip(ours, theirs)) for name, value in group.items()
                   if name not in ignored and _plain(saved.get(name)) != _plain(value)]
        if changed:
            where = (lambda index: f" in group {index}") if len(ours) > 1 else (lambda index: "")
            described = ", ".join(f"{name}={saved!r}{where(index)} in the checkpoint but {now!r} now"
                                  for index, name, saved, now in changed)
            raise CheckpointError(f"checkpoint {path} was trained with other hyperparameters: {described}; "
                                  "resume with the same ones, or start a new run from its weights with "
                                  "mpiprop.network.load_checkpoint(path, model)")

    def _check_ranks_agree(self, what: str, mine: dict[str, Any]) -> None:
        """With `comm`, raise on every rank when the ranks' `mine` differ (all ranks call this together)."""
        if self.comm is None:
            return
        everyone = self.comm.allgather_object(mine)
        for rank, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                raise ValueError(f"the ranks disagree on the trainer's {what}: rank 0 has {everyone[0]} but rank "
                                 f"{rank} has {theirs}; every rank must run the same script with the same "
                                 "arguments and read the same checkpoint file")

    def _weights_digest(self) -> list[int]:
        """CRC32 of each stage's weights (the same list on every replica)."""
        digest = 0
        for p in self.model.parameters():
            digest = zlib.crc32(to_numpy(p.data).tobytes(), digest)
        return self.model.stage_allgather(digest)

    # --- checks and helpers ---------------------------------------------------------
    def _check_loader(self, loader: Any, name: str, allow_empty: bool = False) -> None:
        if not hasattr(loader, "batches") or not hasattr(loader, "__len__"):
            raise TypeError(f"{name} must be a network.data.DataLoader (with batches() and len()), "
                            f"got {type(loader).__name__}")
        shard, shards = self.model.data_shard
        for attribute, expected in (("rank", shard), ("world_size", shards)):
            value = getattr(loader, attribute, None)
            if value is not None and value != expected:
                raise ValueError(f"{name} is sharded with {attribute}={value} but the trainer's {type(self.model).__name__} "
                                 f"reads shard {shard} of {shards}; build the loader with rank={shard}, "
                                 f"world_size={shards}")
        if not allow_empty and self.world_size > 1 and _uneven_shards(loader):
            raise ValueError(f"{name} shards {len(loader.dataset)} samples over {self.world_size} ranks with "
                             "uneven='keep', so the ranks would train on different numbers of samples and steps "
                             "and wait for each other forever; use uneven='pad' or 'drop' for training "
                             "('keep' suits evaluation)")
        if not allow_empty and len(loader) == 0:
            raise ValueError(f"{name} yields no batches on rank {self.rank}: {loader!r}; "
                             "lower batch_size or set drop_last=False")


def as_strategy(model: Any) -> Any:
    """A Layer trained in this process gets a LocalStrategy; a strategy is checked for the contract.

    Raises:
        TypeError: for anything else, naming the methods it lacks.
    """
    if isinstance(model, Layer):
        return LocalStrategy(model)
    missing = [name for name in STRATEGY_METHODS if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(f"the Trainer trains a network Layer or a training strategy (LocalStrategy, DataParallel, "
                        f"Pipeline), but a {type(model).__name__} lacks {missing}")
    return model


def _joined_over_ranks(states: list[dict[str, Any]], whole_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Rank 0's state, each of whose dict values is the union of that dict on every rank (in rank order),
    tensor-parallel shares joined into whole arrays (see `join_parts`)."""
    joined = dict(states[0])
    for key, value in joined.items():
        if isinstance(value, dict):
            joined[key] = join_parts([state[key] or {} for state in states], whole_shapes)
    return joined


def _uneven_shards(loader: Any) -> bool:
    """True for a loader whose ranks get different numbers of samples (uneven='keep' on an uneven dataset)."""
    dataset = getattr(loader, "dataset", None)
    return getattr(loader, "uneven", None) == "keep" and dataset is not None and len(dataset) % loader.world_size != 0


def _device_of_model(model: Any) -> str:
    params = model.parameters()
    return device_of(params[0].data) if params else "cpu"


def _global_loader_settings(loader: Any) -> dict[str, Any]:
    """What must match for a run to resume inside an epoch: the order and the batch over all ranks."""
    settings = {key: getattr(loader, key, None) for key in _LOADER_SETTINGS}
    batch_size, shards = getattr(loader, "batch_size", None), getattr(loader, "world_size", 1)
    settings["global_batch_size"] = None if batch_size is None else batch_size * shards
    return settings


def _first_few(names: list[str], shown: int = 4) -> str:
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _plain(value: Any) -> Any:
    """A hyperparameter as a comparable Python value (tuples and numpy scalars from a file become lists, floats)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.item() if hasattr(value, "item") else value


def _predictions(targets: Any) -> int:
    """Predictions a batch's accuracy counts: one per label for class labels, one per element otherwise."""
    return int(targets.size)


def _overflow_expected(scaling: bool) -> Any:
    """With loss scaling, overflowing scaled gradients are how the scale learns its limit: numpy stays quiet."""
    return numpy.errstate(over="ignore", invalid="ignore") if scaling else contextlib.nullcontext()
