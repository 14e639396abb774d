"""Sharded optimizer state (ZeRO-1 and ZeRO-2) with the Trainer, against one process on the global batch.

    mpiexec -n N python zero_equivalence.py DIRECTORY

Layouts: ZeRO-1, ZeRO-2 reduce-scattering and handing the updated parameters over in shared memory, and ZeRO-2 with
MPI (with MPIPROP_PRETEND_NODES, the ranks on several pretended nodes: the hierarchical allreduce and MPI's
reduce-scatter). For SGD with momentum and Adam, both with parameter groups, a cosine schedule and gradient
clipping (which needs the norm over every rank's share under ZeRO-2), in float64: the weights
after training equal one process's within TOLERANCE; a checkpoint written under ZeRO and resumed
by one process, and one written by one process and resumed under ZeRO, reach the same weights
too, as does plain DataParallel resuming the ZeRO checkpoint; each rank holds the optimizer
state of its own parameters only; and with a NaN sample every rank skips the same steps. Rank 0 prints
"ZERO-OK <check> <layout> <optimizer> ranks=N max_abs_diff=D" per check that passed.
"""
import os
import sys
from pathlib import Path

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR
from mpiprop.network.data.synthetic import synthetic_classification
from stop_after_step import StopAfterStep

TOLERANCE = 1e-6
GLOBAL_BATCH, EPOCHS, STOP_STEP = 16, 2, 6  # 4 steps per epoch: STOP_STEP is inside epoch 2
NAN_SAMPLE = 5  # one sample of the training data, met once per epoch by one rank
BUCKET_MB = 600 / 2**20  # buckets of about 600 bytes: several buckets, several owners in some of them
WORLD = MPI.COMM_WORLD
SEVERAL_NODES = bool(os.environ.get("MPIPROP_PRETEND_NODES"))
LAYOUTS = {  # name -> how DataParallel sums the gradients (ranks on pretended nodes: with MPI between them)
    "zero1": "hierarchical" if SEVERAL_NODES else "shared memory",
    "zero2": "mpi reduce-scatter" if SEVERAL_NODES else "shared memory reduce-scatter",
    "zero2-mpi": "mpi reduce-scatter",  # shared_memory=False
}
OPTIMIZERS = {
    "SGD": (nn.optim.SGD, dict(lr=0.2, momentum=0.9, weight_decay=0.01)),
    "Adam": (nn.optim.Adam, dict(lr=0.05, weight_decay=0.01)),
}


def build_model(seed):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 12),
                          nn.Tanh(), nn.Linear(12, 4))
    return model.to(dtype=numpy.float64)


def groups(strategy):
    """Weights with the optimizer's weight decay; biases without, at half the learning rate."""
    named = list(strategy.named_parameters())
    return [{"params": [p for name, p in named if name.endswith("weight")]},
            {"params": [p for name, p in named if name.endswith("bias")], "weight_decay": 0.0, "lr": 0.02}]


def make(layout, optimizer_name, seed):
    optimizer_class, hyperparameters = OPTIMIZERS[optimizer_name]
    model = build_model(seed)
    if layout in ("local", "dp"):
        strategy = nn.LocalStrategy(model) if layout == "local" else DataParallel(model, bucket_cap_mb=BUCKET_MB)
        return strategy, optimizer_class(groups(strategy), **hyperparameters)
    stage, _, allreduce = layout[len("zero"):].partition("-")
    strategy = DataParallel(model, bucket_cap_mb=BUCKET_MB, shard_optimizer_state=int(stage),
                            shared_memory=allreduce != "mpi")
    assert strategy.allreduce_kind == LAYOUTS[layout], (layout, strategy.allreduce_kind)
    return strategy, strategy.optimizer(optimizer_class, groups(strategy), **hyperparameters)


def run(layout, optimizer_name, *, seed=0, stop_step=None, checkpoint=None, resume=None, nan_sample=None):
    """Train with the Trainer (skipping steps with NaN gradients when `nan_sample` is set); returns (strategy, optimizer)."""
    strategy, optimizer = make(layout, optimizer_name, seed)
    x, y = synthetic_classification(64, 6, 4, seed=0, separation=1.5, dtype=numpy.float64)
    if nan_sample is not None:
        x[nan_sample] = numpy.nan
    shard, shards = strategy.ranks.data_shard
    train = DataLoader(ArrayDataset(x, y), GLOBAL_BATCH // shards, shuffle=True, seed=3, rank=shard, world_size=shards)
    callbacks = [StopAfterStep(-1 if stop_step is None else stop_step)]
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), optimizer, lr_schedule=CosineAnnealingLR(0.2, total=8),
                         clip_grad_norm=0.5, callbacks=callbacks, checkpoint_path=checkpoint, quiet=True,
                         non_finite="raise" if nan_sample is None else "skip")
    history = trainer.fit(train, EPOCHS, resume_from=resume)
    if nan_sample is not None:
        assert [record["skipped_steps"] for record in history] == [1] * EPOCHS, history
    return strategy, optimizer


def largest_difference(strategy, reference):
    expected = dict(reference.named_parameters())
    return max(float(numpy.abs(p.data - expected[name].data).max()) for name, p in strategy.named_parameters())


def report(check, layout, optimizer_name, difference):
    assert difference < TOLERANCE, (check, layout, optimizer_name, difference)
    if WORLD.rank == 0:
        print(f"ZERO-OK {check} {layout} {optimizer_name} ranks={WORLD.size} max_abs_diff={difference:.1e}", flush=True)


def check_state_is_sharded(strategy, optimizer):
    """Each parameter's state lives on its owner alone, and every parameter has an owner that holds state."""
    holders = numpy.zeros(len(optimizer.params), dtype=numpy.int64)
    for index, (p, state) in enumerate(zip(optimizer.params, optimizer.state)):
        assert bool(state) == (strategy.owner_of[id(p)] == WORLD.rank), (index, WORLD.rank, list(state))
        holders[index] = bool(state)
    WORLD.Allreduce(MPI.IN_PLACE, holders)
    assert (holders == 1).all(), holders


def check(directory, layout, optimizer_name):
    reference, _ = run("local", optimizer_name)
    strategy, optimizer = run(layout, optimizer_name)
    check_state_is_sharded(strategy, optimizer)
    weights = WORLD.allgather(numpy.concatenate([p.data.ravel() for p in strategy.parameters()]))
    assert all(numpy.array_equal(w, weights[0]) for w in weights), "ranks disagree"
    report("equivalent", layout, optimizer_name, largest_difference(strategy, reference))

    written_by_zero = directory / f"{layout}-{optimizer_name}.ckpt"
    run(layout, optimizer_name, stop_step=STOP_STEP, checkpoint=written_by_zero)
    written_by_one = directory / f"local-{optimizer_name}-for-{layout}.ckpt"
    if WORLD.rank == 0:
        run("local", optimizer_name, stop_step=STOP_STEP, checkpoint=written_by_one)
        resumed, _ = run("local", optimizer_name, seed=99, resume=written_by_zero)
        difference = largest_difference(resumed, reference)
    WORLD.Barrier()
    report("zero-to-one", layout, optimizer_name, WORLD.bcast(difference if WORLD.rank == 0 else None))
    resumed, optimizer = run(layout, optimizer_name, seed=99, resume=written_by_one)
    check_state_is_sharded(resumed, optimizer)
    report("one-to-zero", layout, optimizer_name, largest_difference(resumed, reference))
    resumed, _ = run("dp", optimizer_name, seed=99, resume=written_by_zero)
    report("zero-to-dp", layout, optimizer_name, largest_difference(resumed, reference))

    skipping_reference, _ = run("local", optimizer_name, nan_sample=NAN_SAMPLE)
    skipping, _ = run(layout, optimizer_name, nan_sample=NAN_SAMPLE)
    report("nan-skipped", layout, optimizer_name, largest_difference(skipping, skipping_reference))


def main(directory):
    for layout in LAYOUTS:
        for optimizer_name in OPTIMIZERS:
            check(Path(directory), layout, optimizer_name)


if __name__ == "__main__":
    main(sys.argv[1])
