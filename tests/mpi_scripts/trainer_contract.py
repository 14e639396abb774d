"""The Trainer's promises over ranks, one scenario per run (the first argument), each printing "<NAME>-OK rank=R ...".

scaler-skip <dir>: DataParallel with a GradScaler and a NaN in one rank's batch, non_finite="skip": every
    rank skips alike, so the loss scales and the replicas' weights stay equal.
scaler-raise <dir>: the same with non_finite="raise": every rank raises the same NonFiniteError (no hang).
eval-pad <dir>: evaluation of a loader with uneven="pad" equals one process on the whole validation set.
best-once <dir>: early stopping's best weights are stored once in the checkpoint, whatever the rank count.
preempt-end <dir>: SIGTERM on the last rank during the last epoch's validation ends in a checkpoint and Preempted.
"""
import os
import signal
import sys

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.data.synthetic import synthetic_classification
from mpiprop.network.training.callbacks import Callback, EarlyStopping
from mpiprop.network.training.checkpoint import read_checkpoint
from mpiprop.network.training.non_finite import NonFiniteError

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()
EPOCHS = 2


def model(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def loaders(nan_rank=None, samples=64, val_samples=43, global_batch=16):
    x, y = synthetic_classification(samples + val_samples, 6, 4, seed=0, separation=1.5)
    train_x = x[:samples].copy()
    if nan_rank is not None:
        train_x[nan_rank + global_batch] = numpy.nan  # a row of rank `nan_rank`'s second batch
    train = DataLoader(ArrayDataset(train_x, y[:samples]), global_batch // SIZE, rank=RANK, world_size=SIZE)
    val = DataLoader(ArrayDataset(x[samples:], y[samples:]), 5, rank=RANK, world_size=SIZE)
    return train, val, (x[samples:], y[samples:])


def scaler(non_finite):
    strategy = DataParallel(model())
    grad_scaler = nn.GradScaler(init_scale=1024.0, growth_interval=1000)
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.SGD(strategy.parameters(), lr=0.5), quiet=True,
                         grad_scaler=grad_scaler, non_finite=non_finite)
    train, _, _ = loaders(nan_rank=SIZE - 1)
    return strategy, grad_scaler, trainer, train


def scaler_skip(folder):
    strategy, grad_scaler, trainer, train = scaler("skip")
    history = trainer.fit(train, 2)
    scales = WORLD.allgather(grad_scaler.scale_value)
    weights = WORLD.allgather(numpy.concatenate([p.data.ravel() for p in strategy.parameters()]))
    drift = max(float(numpy.abs(w - weights[0]).max()) for w in weights)
    assert len(set(scales)) == 1, f"the ranks' loss scales differ: {scales}"
    assert drift == 0.0, f"the replicas' weights drifted {drift} apart"
    assert [r["skipped_steps"] for r in history] == [1, 1] and scales[0] == 1024.0, (history, scales)
    print(f"SCALER-SKIP-OK rank={RANK} scale={scales[0]} skipped={history[0]['skipped_steps']}", flush=True)


def scaler_raise(folder):
    _, _, trainer, train = scaler("raise")
    try:
        trainer.fit(train, 1)
    except NonFiniteError as error:
        messages = WORLD.allgather(str(error))
        assert len(set(messages)) == 1, messages
        assert "step 2 (epoch 1, batch 2)" in messages[0] and "the input batch" in messages[0], messages[0]
        print(f"SCALER-RAISE-OK rank={RANK}", flush=True)
        return
    raise AssertionError("no NonFiniteError for a NaN in the data")


def eval_pad(folder):
    strategy = DataParallel(model())
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.SGD(strategy.parameters(), lr=0.5), quiet=True)
    train, val, (x_val, y_val) = loaders()
    trainer.fit(train, 1)
    got = trainer.evaluate(val)
    reference = nn.Trainer(strategy.module, nn.CrossEntropyLoss(), nn.optim.SGD(strategy.parameters(), lr=0.5),
                           quiet=True).evaluate(DataLoader(ArrayDataset(x_val, y_val), 7))
    assert abs(got["accuracy"] - reference["accuracy"]) < 1e-12, (got, reference)
    assert abs(got["loss"] - reference["loss"]) < 1e-5 * abs(reference["loss"]), (got, reference)
    print(f"EVAL-PAD-OK rank={RANK} accuracy={got['accuracy']:.6f} loss={got['loss']:.6f}", flush=True)


def best_once(folder):
    strategy = DataParallel(model())
    path = os.path.join(folder, f"best-{SIZE}.npz")
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.SGD(strategy.parameters(), lr=0.5), quiet=True,
                         callbacks=[EarlyStopping(patience=5)], checkpoint_path=path)
    train, val, _ = loaders()
    trainer.fit(train, 2, val)
    if RANK == 0:
        saved = read_checkpoint(path)
        state = saved["meta"]["trainer"]["callbacks"][0]["state"]
        assert sorted(state["best_weights"]) == sorted(saved["model"]), state["best_weights"].keys()
        assert "rank_callbacks" not in saved["meta"]["trainer"]
        print(f"BEST-ONCE-OK rank={RANK} bytes={os.path.getsize(path)}", flush=True)


class TermDuringLastValidation(Callback):
    """The last rank gets SIGTERM after the last step, while the last epoch ends."""

    def on_epoch_end(self, trainer, epoch, record):
        if epoch == EPOCHS - 1 and RANK == SIZE - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def preempt_end(folder):
    strategy = DataParallel(model())
    path = os.path.join(folder, "end.npz")
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.SGD(strategy.parameters(), lr=0.5), quiet=True,
                         callbacks=[TermDuringLastValidation()], checkpoint_path=path)
    train, val, _ = loaders()
    trainer.fit(train, EPOCHS, val)
    print(f"AFTER-FIT rank={RANK}: fit returned after a SIGTERM", flush=True)


SCENARIOS = {"scaler-skip": scaler_skip, "scaler-raise": scaler_raise, "eval-pad": eval_pad, "best-once": best_once,
             "preempt-end": preempt_end}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])
