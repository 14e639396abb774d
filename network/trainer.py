"""Trainer: epochs of mini-batch training with validation, schedules, clipping, callbacks, metrics and checkpoints."""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from typing import Any, Callable, Sequence

from mpiprop.network import rng
from mpiprop.network.backend import device_of, get_array_module, to_device, to_numpy
from mpiprop.network.callbacks import Callback
from mpiprop.network.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from mpiprop.network.checks import non_negative_float, positive_int
from mpiprop.network.clipping import clip_grad_norm_
from mpiprop.network.losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss
from mpiprop.network.metrics import MetricSums, MetricTotals, count_correct
from mpiprop.network.non_finite import (POLICIES, NonFiniteError, first_non_finite_layer, grads_finite, is_finite,
                                non_finite_grads)
from mpiprop.network.preemption import PreemptionWatch
from mpiprop.network.progress import progress, progress_wanted
from mpiprop.network.sequential import Sequential

_LOADER_SETTINGS = ("batch_size", "shuffle", "drop_last", "seed", "world_size", "uneven")
MAX_SKIPS_IN_A_ROW = 20
NON_FINITE_FIX = ("lower the learning rate, set clip_grad_norm, check the data, "
                  "or pass non_finite='skip' to skip such steps")


class Trainer:
    """Trains `model` with `optimizer` on `loss_fn`, epoch by epoch, and validates after each epoch.

    `model` is anything that behaves like a Sequential: `out = model(x)`,
    `model.backward(dout)`, `parameters()`, `train()`, `eval()`, `state_dict()`,
    `load_state_dict()`; a data-parallel wrapper that averages gradients in `backward`
    works unchanged (evaluation runs its `model.module` when it has one).
    Every rank runs `fit`; only rank 0 prints, draws the progress bar, writes the metrics
    file, the plot and checkpoints.

    Args:
        model: the model (or a wrapper of it).
        loss_fn: a mean-reduced loss, e.g. `CrossEntropyLoss()`.
        optimizer: e.g. `optim.SGD(model.parameters(), lr=0.1, momentum=0.9)`.
        lr_schedule: callable t -> learning rate (see `mpiprop.network.schedules`), set before each update.
        schedule_per: "step" (t counts optimizer steps) or "epoch" (t counts epochs).
        clip_grad_norm: when given, clip the gradients' total 2-norm to this value before each update.
        callbacks: `Callback` objects, e.g. `EarlyStopping()`.
        accuracy: also report accuracy; by default for CrossEntropyLoss and BCEWithLogitsLoss.
        checkpoint_path: write a checkpoint here after each epoch and when training is stopped
            (the same path on every rank; rank 0 writes it).
        checkpoint_every: also write it every this many optimizer steps (None: only per epoch).
            With a checkpoint path (and `comm` on several ranks), SIGTERM or SIGUSR1 during `fit`
            makes every rank finish its step, write the checkpoint and raise `Preempted`
            (a SystemExit with status 75); resuming from it continues exactly.
        non_finite: what a step with a NaN or Inf output, loss or gradient does: "raise" a
            NonFiniteError naming the step, rank and layer, or "skip" the update (on every rank
            alike, since averaged gradients are the same everywhere; after 20 skips in a row it raises).
        metrics_path: write one JSON line of metrics per epoch here.
        plot_path: save a PNG of the training curves here at the end of `fit` (needs matplotlib).
        rank: this process's rank.
        world_size: number of ranks training together.
        average_metrics: combines metric sums over ranks: it gets this rank's dict of sums and must
            return the same keys, each summed over ranks or each averaged (only ratios are used).
            The default, for one process, returns its input.
        comm: with several ranks, a `mpiprop.distributed.Communicator` (anything with `allgather_object`):
            checkpoints then hold every rank's random state and running metric sums, so a resumed
            run draws the same dropout masks and records the same metrics as an uninterrupted one,
            and `fit` checks that the ranks agree on their settings and resumed from the same state.
        quiet: print nothing and draw no progress bar.
        progress: progress bar per epoch: None draws it on a terminal when tqdm is installed.
        print_fn: where the per-epoch JSON lines are printed.
    """

    def __init__(self, model: Any, loss_fn: Loss, optimizer: Any, *, lr_schedule: Callable[[int], float] | None = None,
                 schedule_per: str = "step", clip_grad_norm: float | None = None,
                 callbacks: Sequence[Callback] = (), accuracy: bool | None = None,
                 checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                 non_finite: str = "raise", metrics_path: str | os.PathLike | None = None,
                 plot_path: str | os.PathLike | None = None, rank: int = 0, world_size: int = 1,
                 average_metrics: Callable[[MetricSums], MetricSums] | None = None, comm: Any = None,
                 quiet: bool = False, progress: bool | None = None, print_fn: Callable[[str], Any] = print):
        self.world_size = positive_int(world_size, "Trainer world_size")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"Trainer rank must be an integer in [0, {self.world_size}), got {rank!r}")
        if schedule_per not in ("step", "epoch"):
            raise ValueError(f"schedule_per must be 'step' or 'epoch', got {schedule_per!r}")
        if non_finite not in POLICIES:
            raise ValueError(f"non_finite must be one of {POLICIES}, got {non_finite!r}")
        if comm is not None and (comm.rank, comm.size) != (rank, self.world_size):
            raise ValueError(f"comm is rank {comm.rank} of {comm.size} but the trainer was given rank={rank}, "
                             f"world_size={world_size}; pass rank=comm.rank, world_size=comm.size")
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError(f"lr_schedule must be callable (t -> learning rate), got {type(lr_schedule).__name__}")
        for index, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(f"callback {index} is a {type(callback).__name__}, not a network.callbacks.Callback")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.lr_schedule, self.schedule_per = lr_schedule, schedule_per
        self.clip_grad_norm = None if clip_grad_norm is None else non_negative_float(clip_grad_norm, "clip_grad_norm")
        self.callbacks = list(callbacks)
        self.accuracy = isinstance(loss_fn, (CrossEntropyLoss, BCEWithLogitsLoss)) if accuracy is None else accuracy
        self.checkpoint_path, self.metrics_path, self.plot_path = checkpoint_path, metrics_path, plot_path
        self.checkpoint_every = None if checkpoint_every is None else positive_int(checkpoint_every, "checkpoint_every")
        self.non_finite = non_finite
        self.rank, self.comm = rank, comm
        self.average_metrics = average_metrics
        self.quiet = bool(quiet)
        self.show_progress = progress_wanted(progress, rank, self.quiet)
        self.print_fn = print_fn
        self._device = _device_of_model(model)
        self._reset()

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

    def _reset(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # the epoch in progress (0-based)
        self.batch = 0  # batches done in that epoch
        self.step = 0  # training steps over the whole run, skipped ones included
        self.skipped_in_a_row = 0
        self.skipped_this_epoch = 0
        self.stop_training = False
        self._train_totals = MetricTotals()
        self._epoch_started = time.perf_counter()
        self._preemption = PreemptionWatch(enabled=False)

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
                it had not stopped.

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
        self._loader_settings = {key: getattr(train_loader, key, None) for key in _LOADER_SETTINGS}
        self._device = _device_of_model(self.model)
        self._check_ranks_agree("settings", {"epochs": epochs, "resume": resume_from is not None,
                                             "checkpoint": self.checkpoint_path is not None,
                                             "checkpoint_every": self.checkpoint_every, "non_finite": self.non_finite,
                                             "batches": len(train_loader)})
        if resume_from is not None:
            self._resume(os.fspath(resume_from), train_loader)
            self._check_ranks_agree("resumed state", {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                                                      "weights_crc32": self._weights_digest()})
        self._rewrite_metrics_file()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        self._preemption = PreemptionWatch(self.checkpoint_path is not None
                                           and (self.world_size == 1 or self.comm is not None))
        with self._preemption:
            while self.epoch < epochs and not self.stop_training:
                if not self._train_epoch(train_loader, epochs):
                    break
                self._end_epoch(val_loader)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if self.plot_path is not None and self.is_main and self.history:
            from mpiprop.network.plots import plot_history
            plot_history(self.history, self.plot_path)
        return self.history

    def _train_epoch(self, loader: Any, epochs: int) -> bool:
        """Run the rest of the current epoch; False when a callback stopped training inside it."""
        if self.batch == 0:
            self._epoch_started = time.perf_counter()
            for callback in self.callbacks:
                callback.on_epoch_start(self, self.epoch)
        if self.lr_schedule is not None and self.schedule_per == "epoch":
            self.optimizer.lr = self.lr_schedule(self.epoch)
        self.model.train()
        batches = progress(loader.batches(self.epoch, start=self.batch), total=len(loader) - self.batch,
                           description=f"epoch {self.epoch + 1}/{epochs}", enabled=self.show_progress)
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
        """One update on one batch: forward, loss, backward, clip, schedule, optimizer step; returns the loss.

        Raises:
            NonFiniteError: for a NaN or Inf output, loss or gradient when `non_finite` is "raise".
        """
        x, y = to_device(inputs, self._device), to_device(targets, self._device)
        self.optimizer.zero_grad()
        output = self.model(x)
        loss, output_grad = self._loss_and_gradient(x, output, y)
        self._backward(output_grad)
        if not self._gradients_finite(loss):
            self.step += 1
            return loss
        correct = count_correct(output, y) if self.accuracy else None
        if self.clip_grad_norm is not None:
            clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        if self.lr_schedule is not None and self.schedule_per == "step":
            self.optimizer.lr = self.lr_schedule(self.step)
        self.optimizer.step()
        self.step += 1
        self._train_totals.add(loss, len(y), correct, _predictions(y))
        self.skipped_in_a_row = 0
        return loss

    def _loss_and_gradient(self, x: Any, output: Any, y: Any) -> tuple[float, Any]:
        """The loss and its gradient; a non-finite output or loss raises, or, to skip, gets a NaN gradient.

        That NaN gradient makes the gradients averaged over ranks NaN on every rank, so every
        rank skips the step, not only the one that met the NaN.
        """
        if is_finite(output):
            loss = self.loss_fn(output, y)
            if math.isfinite(loss):
                return loss, self.loss_fn.backward()
            where = f"the loss ({loss})"
        else:
            where = first_non_finite_layer(getattr(self.model, "module", self.model), x)
        if self.non_finite == "raise":
            raise NonFiniteError(f"{self._step_name()}: the model's output or loss holds NaN or Inf, "
                                 f"first in {where}; {NON_FINITE_FIX}")
        return math.nan, get_array_module(output).full_like(output, math.nan)

    def _gradients_finite(self, loss: float) -> bool:
        """Check the (averaged) gradients; on NaN or Inf raise, or drop them and return False to skip."""
        if grads_finite(self.model.parameters()):
            return True
        if self.non_finite == "raise":
            names = non_finite_grads(getattr(self.model, "module", self.model).named_parameters())
            averaged = " (averaged over ranks)" if self.world_size > 1 else ""
            raise NonFiniteError(f"{self._step_name()}: the gradients{averaged} of {_first_few(names)} hold NaN "
                                 f"or Inf; the loss on this rank was {loss:.6g}; {NON_FINITE_FIX}")
        self.optimizer.zero_grad()
        self.skipped_in_a_row += 1
        self.skipped_this_epoch += 1
        if self.skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise NonFiniteError(f"{self._step_name()}: {self.skipped_in_a_row} steps in a row had NaN or Inf "
                                 "gradients and were skipped; training has diverged: lower the learning rate, set "
                                 "clip_grad_norm or check the data")
        return False

    def _step_name(self) -> str:
        return f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.batch + 1}) on rank {self.rank}"

    def _backward(self, output_grad: Any) -> None:
        """A plain Sequential can skip its input gradient; a wrapper gets the basic call."""
        if isinstance(self.model, Sequential):
            self.model.backward(output_grad, input_grad=False)
        else:
            self.model.backward(output_grad)

    def _end_epoch(self, val_loader: Any) -> None:
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "lr": float(self.optimizer.lr)}
        record.update(self._train_totals.result(self.average_metrics))
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
        evaluated = getattr(self.model, "module", self.model)
        device = _device_of_model(self.model)
        totals = MetricTotals()
        for inputs, targets in loader:
            x, y = to_device(inputs, device), to_device(targets, device)
            output, _ = evaluated.forward(x)
            loss, _ = self.loss_fn.forward(output, y)
            correct = count_correct(output, y) if self.accuracy else None
            totals.add(loss, len(y), correct, _predictions(y))
        return totals.result(self.average_metrics, prefix)

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
        """Rank 0 writes the checkpoint; with `comm`, every rank first contributes its random state and metric sums."""
        if self.checkpoint_path is None:
            return
        ranks = None if self.comm is None else self.comm.allgather_object(
            {"rng": rng.get_rng_state(), "train_sums": self._train_totals.state_dict()})
        if self.is_main:
            save_checkpoint(self.checkpoint_path, self.model, self.optimizer, trainer=self._state(ranks))

    def _state(self, ranks: list[dict] | None) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "rank_rng": None if ranks is None else [each["rng"] for each in ranks],
            "rank_train_sums": None if ranks is None else [each["train_sums"] for each in ranks],
            "train_sums": self._train_totals.state_dict(),
            "skipped": [self.skipped_this_epoch, self.skipped_in_a_row],
            "history": self.history,
            "callbacks": [{"type": type(c).__name__, "state": c.state_dict()} for c in self.callbacks],
            "loader": self._loader_settings,
        }

    def _resume(self, path: str, loader: Any) -> None:
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
                                  f"but this loader has {self._loader_settings}; use the same loader settings")
        load_checkpoint(path, self.model, self.optimizer)
        rank_rng = state.get("rank_rng")
        if rank_rng is not None and len(rank_rng) == self.world_size:
            rng.set_rng_state(rank_rng[self.rank])
        for callback, entry in zip(self.callbacks, state["callbacks"]):
            callback.load_state_dict(entry["state"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.history = list(state["history"])
        rank_sums = state.get("rank_train_sums")
        own_sums = rank_sums is not None and len(rank_sums) == self.world_size
        self._train_totals.load_state_dict(rank_sums[self.rank] if own_sums else state["train_sums"])
        self.skipped_this_epoch, self.skipped_in_a_row = state.get("skipped", (0, 0))

    def _check_hyperparameters(self, path: str, saved_optimizer: dict[str, Any] | None) -> None:
        """A resumed run goes on with the hyperparameters it stopped with; a changed one is an error."""
        if saved_optimizer is None:
            return
        ours = self.optimizer.state_dict()["hyperparameters"]
        theirs = saved_optimizer.get("hyperparameters", {})
        scheduled = {"lr"} if self.lr_schedule is not None else set()
        changed = {name: (_plain(theirs.get(name)), _plain(value)) for name, value in ours.items()
                   if name not in scheduled and _plain(theirs.get(name)) != _plain(value)}
        if changed:
            described = ", ".join(f"{name}={saved!r} in the checkpoint but {now!r} now"
                                  for name, (saved, now) in changed.items())
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

    def _weights_digest(self) -> int:
        digest = 0
        for p in self.model.parameters():
            digest = zlib.crc32(to_numpy(p.data).tobytes(), digest)
        return digest

    # --- checks and helpers ---------------------------------------------------------
    def _check_loader(self, loader: Any, name: str, allow_empty: bool = False) -> None:
        if not hasattr(loader, "batches") or not hasattr(loader, "__len__"):
            raise TypeError(f"{name} must be a network.data.DataLoader (with batches() and len()), "
                            f"got {type(loader).__name__}")
        for attribute in ("rank", "world_size"):
            value, expected = getattr(loader, attribute, None), getattr(self, attribute)
            if value is not None and value != expected:
                raise ValueError(f"{name} is sharded with {attribute}={value} but the trainer has "
                                 f"{attribute}={expected}; build the loader with rank=..., world_size=... too")
        if not allow_empty and self.world_size > 1 and _uneven_shards(loader):
            raise ValueError(f"{name} shards {len(loader.dataset)} samples over {self.world_size} ranks with "
                             "uneven='keep', so the ranks would train on different numbers of samples and steps "
                             "and wait for each other forever; use uneven='pad' or 'drop' for training "
                             "('keep' suits evaluation)")
        if not allow_empty and len(loader) == 0:
            raise ValueError(f"{name} yields no batches on rank {self.rank}: {loader!r}; "
                             "lower batch_size or set drop_last=False")


def _uneven_shards(loader: Any) -> bool:
    """True for a loader whose ranks get different numbers of samples (uneven='keep' on an uneven dataset)."""
    dataset = getattr(loader, "dataset", None)
    return getattr(loader, "uneven", None) == "keep" and dataset is not None and len(dataset) % loader.world_size != 0


def _device_of_model(model: Any) -> str:
    return device_of(model.parameters()[0].data)


def _first_few(names: list[str], shown: int = 4) -> str:
    listed = ", ".join(repr(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _plain(value: Any) -> Any:
    """A hyperparameter as a comparable Python value (tuples and numpy scalars from a file become lists, floats)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.item() if hasattr(value, "item") else value


def _predictions(targets: Any) -> int:
    """Predictions a batch's accuracy counts: one per label for class labels, one per element otherwise."""
    return int(targets.size)
