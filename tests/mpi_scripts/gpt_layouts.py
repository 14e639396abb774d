"""The GPT trained in every layout but tensor parallel, against one process on the global batch.

    mpiexec -n N python gpt_layouts.py DIRECTORY LAYOUT ...

Layouts: "local" and "local-recompute" (one process; each block half wrapped in nn.Recompute),
"dp", "dp-recompute", "zero1", "zero2" (DataParallel over all ranks, ZeRO with sharded optimizer
state), "pipeN-SCHEDULE" (N stages, SCHEDULE one of gpipe, 1f1b, interleaved, zb-h1; N below the
rank count makes a grid with replicas), and "resume" (a checkpoint written by DataParallel resumed
by a 2-stage pipeline, whose checkpoint one process resumes, each with the next-step loss of one
uninterrupted process).
A 2-block GPT (its embedding and head tied), float64, no dropout, AdamW with weight decay and a
gradient clipping norm small enough to act at every step, trained with the Trainer: every loss and
every weight (both names of the tied one, from the stages holding it) must match one process within
TOLERANCE. Rank 0 prints "GPT-OK <layout> max_abs_diff=D" per layout that passed.
"""
import sys
from pathlib import Path

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel, Pipeline
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.models.next_token_loss import NextTokenLoss
from stop_after_step import StopAfterStep

TOLERANCE = 1e-10
VOCAB, CONTEXT, BLOCKS, HEADS, WIDTH = 13, 6, 2, 2, 8
GLOBAL_BATCH, MICRO_BATCHES, STEPS = 8, 2, 3
WORLD = MPI.COMM_WORLD


def build_model(recompute=False):
    model = nn.gpt(VOCAB, CONTEXT, BLOCKS, HEADS, WIDTH, dropout=0.0, dtype=numpy.float64,
                   generator=numpy.random.default_rng(7))
    if recompute:
        layers = list(model.layers)
        model = nn.Sequential(layers[0], *[nn.Recompute(half) for half in layers[1:-2]], *layers[-2:])
    return model


def data():
    rng = numpy.random.default_rng(11)
    ids = rng.integers(0, VOCAB, size=(GLOBAL_BATCH * STEPS, CONTEXT + 1))
    return ids[:, :-1], ids[:, 1:]


def make(layout):
    kind, _, option = layout.partition("-")
    model = build_model(recompute=option == "recompute")
    if kind == "local":
        return nn.LocalStrategy(model)
    if kind == "dp":
        return DataParallel(model)
    if kind.startswith("zero"):
        return DataParallel(model, shard_optimizer_state=int(kind[len("zero"):]))
    stages = int(kind[len("pipe"):])
    return Pipeline(model, MICRO_BATCHES, schedule=option, stages=stages, comm=WORLD)


def optimizer_for(strategy):
    unique = {id(p): p for p in strategy.parameters()}
    decay = [p for p in unique.values() if len(p.shape) >= 2]
    rest = [p for p in unique.values() if len(p.shape) < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    if getattr(strategy, "shard_optimizer_state", 0):
        return strategy.optimizer(nn.optim.AdamW, groups, lr=0.01)
    return nn.optim.AdamW(groups, lr=0.01)


class Losses(nn.callbacks.Callback):
    def __init__(self):
        self.values = []

    def on_batch_end(self, trainer, step, loss):
        self.values.append(loss)


def train(layout, stop_step=None, checkpoint=None, resume=None):
    """The strategy and the losses of its steps, stopping after step `stop_step` (counting those before a resume)."""
    strategy = make(layout)
    shard, shards = strategy.ranks.data_shard
    x, y = data()
    loader = DataLoader(ArrayDataset(x, y), GLOBAL_BATCH // shards, shuffle=False, rank=shard, world_size=shards)
    losses = Losses()
    trainer = nn.Trainer(strategy, NextTokenLoss(), optimizer_for(strategy), clip_grad_norm=0.05,
                         callbacks=[losses, StopAfterStep(stop_step)], checkpoint_path=checkpoint, quiet=True,
                         progress=False)
    trainer.fit(loader, 1, resume_from=resume)
    return strategy, global_mean(shard, losses.values) if shards > 1 else losses.values


def global_mean(shard, losses):
    """The losses of the global batch: the mean of the data shards' (the Trainer reports each rank's shard's)."""
    by_shard = dict(WORLD.allgather((shard, losses)))
    return list(numpy.mean([by_shard[index] for index in sorted(by_shard)], axis=0))


def whole_state(strategy):
    if hasattr(strategy, "consolidated_state_dict"):
        return strategy.consolidated_state_dict()
    return strategy.state_dict() if WORLD.rank == 0 else None


def largest_difference(state, reference_state):
    assert sorted(state) == sorted(reference_state), (sorted(state), sorted(reference_state))
    return max(float(numpy.abs(numpy.asarray(state[name]) - reference_state[name]).max()) for name in state)


def compare(layout, strategy, losses, reference, reference_losses):
    state = whole_state(strategy)
    if WORLD.rank != 0:
        return
    assert numpy.allclose(losses, reference_losses, rtol=0, atol=TOLERANCE), (layout, losses, reference_losses)
    difference = largest_difference(state, reference)
    assert difference < TOLERANCE, (layout, difference)
    print(f"GPT-OK {layout} max_abs_diff={difference:.2e}", flush=True)


def check_resume(directory, reference_losses):
    """DP writes after 1 step, a 2-stage pipeline resumes for 1 more and writes, one process resumes for the third."""
    written_by_dp = str(directory / "dp.npz")
    written_by_pipe = str(directory / "pipe.npz")
    _, dp_losses = train("dp", stop_step=1, checkpoint=written_by_dp)
    _, pipe_losses = train("pipe2-1f1b", stop_step=2, checkpoint=written_by_pipe, resume=written_by_dp)
    last = None
    if WORLD.rank == 0:
        _, last = train("local", resume=written_by_pipe)
    WORLD.Barrier()
    if WORLD.rank == 0:
        losses = dp_losses + pipe_losses + last
        assert numpy.allclose(losses, reference_losses, rtol=0, atol=TOLERANCE), (losses, reference_losses)
        print(f"GPT-OK resume losses={losses}", flush=True)


def main():
    directory = Path(sys.argv[1])
    reference_strategy, reference_losses = train("local")
    reference = {name: numpy.asarray(value) for name, value in reference_strategy.state_dict().items()}
    for layout in sys.argv[2:]:
        if layout == "resume":
            check_resume(directory, reference_losses)
            continue
        strategy, losses = train(layout)
        compare(layout, strategy, losses, reference, reference_losses)


if __name__ == "__main__":
    main()
