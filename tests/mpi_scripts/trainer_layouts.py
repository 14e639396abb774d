"""The Trainer in every layout against LocalStrategy on the global batch, checkpoints across layouts, and resume.

    mpiexec -n N python trainer_layouts.py DIRECTORY [LAYOUT ...]

Layouts: "local" (one process, the reference), "dp" (DataParallel over all ranks), "pipeN"
(Pipeline with N stages; N below the rank count makes a grid with replicas), "tpT" (each
block's matrices split over T ranks, the groups data-parallel replicas) and "pipeN-tpT" (N
stages of T ranks, replicas x N x T: a 3-D layout). Without LAYOUTs: local, dp, pipe2, pipe4
as the ranks allow. Float64, no
dropout in the equivalence checks: weights, metrics and predictions must match the
reference within TOLERANCE, with gradients clipped by a norm small enough to act at every
step (a norm taken over one stage only would give other weights). Each rank prints
"LAYOUT-OK rank=R <check> <layout...>" per check that passed.
"""
import re
import sys
from pathlib import Path

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel, Pipeline
from mpiprop.distributed.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel_group
from mpiprop.network.training.callbacks import EarlyStopping
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.training.non_finite import NonFiniteError
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR
from mpiprop.network.data.synthetic import synthetic_classification
from stop_after_step import StopAfterStep

TOLERANCE = 1e-10
GLOBAL_BATCH, MICRO_BATCHES, EPOCHS, STOP_STEP = 16, 2, 2, 6  # 4 steps per epoch: STOP_STEP is inside epoch 2
NAN_SAMPLE = 5  # one sample of the training data, met once per epoch by one rank of a replica
WORLD = MPI.COMM_WORLD


def layouts():
    if len(sys.argv) > 2:
        return sys.argv[2:]
    size = WORLD.size
    return ["local", "dp"] + [f"pipe{stages}" for stages in (2, 4) if stages <= size and size % stages == 0]


def stages_and_tensor(layout):
    """(stages, tensor-parallel size) of a "pipeN", "tpT" or "pipeN-tpT" layout."""
    found = dict(re.findall(r"(pipe|tp)(\d+)", layout))
    return int(found.get("pipe", 1)), int(found.get("tp", 1))


def build_model(seed, dropout=0.0, tensor=1):
    """Two blocks, Linear -> activation -> Linear; with `tensor` > 1 each block is split column -> row."""
    nn.manual_seed(seed)
    extra = [nn.Dropout(dropout)] if dropout else []
    layers = [nn.Linear(6, 16), nn.Tanh(), *extra, nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(),
              nn.Linear(12, 4)]
    layers = [layer.to(dtype=numpy.float64) for layer in layers]
    if tensor > 1:
        group = tensor_parallel_group(tensor)
        column, row = (0, 4 + len(extra)), (2 + len(extra), 6 + len(extra))
        layers = [RowParallelLinear(layer, group) if index in row else
                  ColumnParallelLinear(layer, group) if index in column else layer for index, layer in enumerate(layers)]
    return nn.Sequential(*layers)


def make_strategy(layout, model):
    if layout == "local":
        return nn.LocalStrategy(model)
    if layout == "dp":
        return DataParallel(model)
    return Pipeline(model, MICRO_BATCHES, "1f1b", stages=stages_and_tensor(layout)[0])


def model_for(layout, seed, dropout=0.0):
    return build_model(seed, dropout, tensor=stages_and_tensor(layout)[1] if layout.startswith(("pipe", "tp")) else 1)


def data(nan_sample=None):
    x, y = synthetic_classification(96, 6, 4, seed=0, separation=1.5, dtype=numpy.float64)
    if nan_sample is not None:
        x[nan_sample] = numpy.nan
    return (x[:64], y[:64]), (x[64:], y[64:])


def loaders(strategy, nan_sample=None):
    (x, y), (x_val, y_val) = data(nan_sample)
    shard, shards = strategy.ranks.data_shard
    train = DataLoader(ArrayDataset(x, y), GLOBAL_BATCH // shards, shuffle=True, seed=3, rank=shard, world_size=shards)
    val = DataLoader(ArrayDataset(x_val, y_val), 16, uneven="keep", rank=shard, world_size=shards)
    return train, val


def run(layout, *, seed=0, epochs=EPOCHS, stop_step=None, checkpoint=None, resume=None, dropout=0.0,
        nan_sample=None, keep_first_epoch=False):
    """Train `layout` with the Trainer; returns (strategy, history).

    keep_first_epoch: early stopping that restores the weights of epoch 1 at the end (it
    monitors the epoch number, which never improves after that).
    """
    strategy = make_strategy(layout, model_for(layout, seed, dropout))
    if dropout:
        nn.manual_seed(100 + strategy.ranks.data_shard[0])  # tensor ranks of one replica draw alike
    optimizer = nn.optim.SGD(strategy.parameters(), lr=0.2, momentum=0.9)
    stopping = EarlyStopping("epoch", patience=10) if keep_first_epoch else EarlyStopping(patience=10)
    callbacks = [stopping, StopAfterStep(-1 if stop_step is None else stop_step)]
    trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), optimizer, lr_schedule=CosineAnnealingLR(0.2, total=12),
                         clip_grad_norm=0.05, callbacks=callbacks, checkpoint_path=checkpoint, quiet=True,
                         non_finite="raise" if nan_sample is None else "skip")
    train, val = loaders(strategy, nan_sample)
    history = trainer.fit(train, epochs, val, resume_from=resume)
    return strategy, [{k: v for k, v in record.items() if k != "time"} for record in history]


def largest_difference(strategy, reference):
    """Over this rank's parameters (its shares of split ones) against the reference model's."""
    expected = strategy.ranks.cut({name: p.data for name, p in reference.named_parameters()})
    return max(float(numpy.abs(p.data - expected[name]).max()) for name, p in strategy.named_parameters())


def assert_close_histories(history, expected, tolerance):
    assert len(history) == len(expected), (history, expected)
    for record, reference in zip(history, expected):
        assert record.keys() == reference.keys(), (record, reference)
        for key in record:
            assert abs(record[key] - reference[key]) <= tolerance, (key, record[key], reference[key])


def report(check, *what):
    print(f"LAYOUT-OK rank={WORLD.rank} {check} {' '.join(what)}", flush=True)


def check_equivalence(reference, reference_history):
    for layout in layouts()[1:]:
        strategy, history = run(layout)
        difference = largest_difference(strategy, reference.module)
        assert difference < TOLERANCE, (layout, difference)
        assert_close_histories(history, reference_history, TOLERANCE)
        report("equivalent", layout, f"max_abs_diff={difference:.1e}")


def write_checkpoints(directory):
    """Every layout stops inside epoch 2 and leaves a checkpoint (the local one is written by rank 0 alone)."""
    for layout in layouts():
        if layout != "local" or WORLD.rank == 0:
            run(layout, stop_step=STOP_STEP, checkpoint=directory / f"{layout}.ckpt")
        WORLD.Barrier()


def check_resume_across_layouts(directory, reference, reference_history):
    (x_val, _), = [data()[1]]
    reference.eval()
    expected_predictions = reference.predict(x_val)
    for writer in layouts():
        for reader in layouts():
            strategy, history = run(reader, seed=99, resume=directory / f"{writer}.ckpt")
            difference = largest_difference(strategy, reference.module)
            assert difference < TOLERANCE, (writer, reader, difference)
            assert_close_histories(history, reference_history, TOLERANCE)
            strategy.eval()
            predictions = strategy.predict(x_val)
            if predictions is not None:
                assert numpy.abs(predictions - expected_predictions).max() < TOLERANCE, (writer, reader)
            report("resumed", f"written={writer}", f"read={reader}")


def check_best_weights_move_across_layouts(directory):
    """Early stopping's best weights, kept per stage and written with the checkpoint, are restored in any layout."""
    first_epoch, _ = run("local", epochs=1)
    for writer in layouts():
        path = directory / f"best-{writer}.ckpt"
        if writer != "local" or WORLD.rank == 0:
            run(writer, stop_step=STOP_STEP, checkpoint=path, keep_first_epoch=True)
        WORLD.Barrier()
        for reader in layouts():
            strategy, _ = run(reader, seed=99, resume=path, keep_first_epoch=True)
            difference = largest_difference(strategy, first_epoch.module)
            assert difference < TOLERANCE, (writer, reader, difference)
            report("best-weights", f"written={writer}", f"read={reader}")


def check_same_layout_resume_is_bit_identical(directory):
    for layout in layouts():
        strategy, history = run(layout, dropout=0.2)
        expected = {name: p.data.copy() for name, p in strategy.named_parameters()}
        path = directory / (f"dropout-{layout}-{WORLD.rank}.ckpt" if layout == "local" else f"dropout-{layout}.ckpt")
        run(layout, stop_step=STOP_STEP, checkpoint=path, dropout=0.2)
        resumed, resumed_history = run(layout, seed=99, resume=path, dropout=0.2)
        assert resumed_history == history, (layout, resumed_history, history)
        for name, p in resumed.named_parameters():
            assert numpy.array_equal(p.data, expected[name]), (layout, name)
        report("bit-identical", layout)


def check_a_nan_sample_is_skipped_by_every_rank_alike():
    """One NaN sample: the ranks that read it and the ones that do not all skip that step, as one process does."""
    reference, reference_history = run("local", nan_sample=NAN_SAMPLE)
    assert [record["skipped_steps"] for record in reference_history] == [1, 1], reference_history
    for layout in layouts()[1:]:
        strategy, history = run(layout, nan_sample=NAN_SAMPLE)
        difference = largest_difference(strategy, reference.module)
        assert difference < TOLERANCE, (layout, difference)
        assert_close_histories(history, reference_history, TOLERANCE)
        report("skipped", layout)


def check_non_finite_is_located():
    for layout in [layout for layout in layouts() if layout.startswith(("pipe", "tp"))]:
        stages, tensor = stages_and_tensor(layout)
        if stages == 1:
            continue
        model = model_for(layout, 0)
        model[6].weight.data[0, 0] = numpy.nan
        strategy = make_strategy(layout, model)
        trainer = nn.Trainer(strategy, nn.CrossEntropyLoss(), nn.optim.SGD(strategy.parameters(), lr=0.1), quiet=True)
        try:
            trainer.fit(loaders(strategy)[0], 1)
        except NonFiniteError as error:
            holder = strategy.ranks.gather_model(any(name.startswith("6.") for name, _ in strategy.named_parameters()))
            stage = holder.index(True) // tensor
            kind = "RowParallelLinear" if tensor > 1 else "Linear"
            expected = f"first in layer 6 ({kind}(12, 4, bias=True"
            assert expected in str(error) and f"(stage {stage} of {strategy.num_stages}" in str(error), str(error)
            assert "step 1 (epoch 1, batch 1) on rank 0 (stage 0 of" in str(error), str(error)
            assert len(set(WORLD.allgather(str(error)))) == 1, "the ranks raised different messages"
        else:
            raise AssertionError(f"{layout}: no NonFiniteError for a NaN weight")
        report("located", layout)


def main(directory):
    directory = Path(directory)
    reference, reference_history = run("local")
    check_equivalence(reference, reference_history)
    write_checkpoints(directory)
    check_resume_across_layouts(directory, reference, reference_history)
    check_best_weights_move_across_layouts(directory)
    check_same_layout_resume_is_bit_identical(directory)
    check_a_nan_sample_is_skipped_by_every_rank_alike()
    check_non_finite_is_located()


if __name__ == "__main__":
    main(sys.argv[1])
