"""Tensor-parallel GPT on T ranks against one process running the whole GPT on the same batch (float64).

Usage: mpiexec -n N python tp_gpt_equivalence.py T [sequence-parallel]. With N == T: the loss and every parameter's
gradient (shares gathered) of one batch, without and with dropout; vocabulary-parallel
cross-entropy against CrossEntropyLoss (vocabulary not a multiple of T, ignore_index, each
reduction); a few AdamW steps; the heads error; full state dicts both ways; the Trainer (AdamW,
clipping, validation) through a Pipeline of one stage, whose checkpoint loads into one process;
checkpoints with optimizer state resumed across the two layouts. With N == 2T:
that Pipeline holds two replicas, each on half of the global batch; with N == 4 and T == 2 also
a grid of 2 stages x 2 tensor ranks (the tied embedding and head on different stages); with N == 2
also the GPT without tensor parallelism over 2 stages. With "sequence-parallel", every split GPT runs
with sequence parallelism, the gradients are also checked on batches of fewer rows than ranks and of
rows that the ranks do not divide. Prints one line per check on
rank 0 ("<check> max_abs_diff=<x>"), then "rank R ok" for every rank that finished (printed by rank 0, so
that no line of another rank can fall inside one of its lines).
"""
import os
import sys
import tempfile

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Communicator, Pipeline
from mpiprop.distributed.tensor_parallel import (
    VocabParallelCrossEntropy, full_state_dict, load_full_state_dict, named_split_layers, tensor_parallel_gpt,
    tensor_parallel_group,
)
from mpiprop.distributed.tensor_parallel.sequence_parallel import shard_counts
from mpiprop.distributed.tensor_parallel.vocab_parallel_embedding import vocab_shard
from mpiprop.network.models.gpt import gpt
from mpiprop.network.models.next_token_loss import NextTokenLoss
from mpiprop.network.training.checkpoint import read_checkpoint

VOCAB, CONTEXT, LAYERS, HEADS, EMBED, BATCH, STEPS, SEED = 13, 8, 2, 4, 16, 4, 3, 7
IGNORE = -100
SEQUENCE_PARALLEL = sys.argv[2:] == ["sequence-parallel"]


def split_gpt(group, dropout: float = 0.0) -> nn.Sequential:
    return tensor_parallel_gpt(whole_gpt(dropout), group, sequence_parallel=SEQUENCE_PARALLEL)


def whole_gpt(dropout: float = 0.0) -> nn.Sequential:
    nn.manual_seed(SEED)
    return gpt(VOCAB, CONTEXT, LAYERS, HEADS, EMBED, dropout, dtype=numpy.float64)


def batch(seed: int, rows: int = BATCH, ignore: bool = True):
    rng = numpy.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(rows, CONTEXT))
    targets = rng.integers(0, VOCAB, size=(rows, CONTEXT))
    if ignore:
        targets[0, :3] = IGNORE
    return ids, targets


def full_gradients(model: nn.Sequential) -> dict[str, numpy.ndarray]:
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    for prefix, layer in named_split_layers(model):
        grads.update({prefix + name: value for name, value in layer.full_parameters("grad").items()})
    return grads


def largest_difference(ours: dict, reference: dict, what: str) -> float:
    assert ours.keys() == reference.keys(), f"{what}: names {sorted(ours)} vs {sorted(reference)}"
    worst = 0.0
    for name, expected in reference.items():
        assert ours[name].shape == expected.shape, f"{what} {name}: {ours[name].shape} vs {expected.shape}"
        worst = max(worst, float(numpy.abs(ours[name] - expected).max()))
    return worst


def one_step(model, loss_fn, ids, targets, dropout_seed: int) -> float:
    model.zero_grad()
    nn.manual_seed(dropout_seed)
    loss = loss_fn(model(ids), targets)
    model.backward(loss_fn.backward(), input_grad=False)
    return loss


def check_gradients(group, say, dropout: float, rows: int = BATCH) -> None:
    reference, split = whole_gpt(dropout), split_gpt(group, dropout)
    ids, targets = batch(1, rows)
    expected = one_step(reference, NextTokenLoss(ignore_index=IGNORE), ids, targets, 11)
    loss = one_step(split, VocabParallelCrossEntropy(group, ignore_index=IGNORE), ids, targets, 11)
    worst = max(abs(loss - expected), largest_difference(full_gradients(split), full_gradients(reference), "grad"))
    size = "" if rows == BATCH else f" rows={rows}"
    say(f"T={group.size} dropout={dropout}{size} loss and gradients max_abs_diff={worst:.3e}")


def check_shard_rows(group, say) -> None:
    """Under sequence parallelism the embedding hands each rank its rows of the batch, and the first LayerNorm
    normalises those rows alone: the reference's rows, on a shard of shard_counts' size."""
    reference, split = whole_gpt(), split_gpt(group)
    ids, _ = batch(2, rows=5)
    rows = shard_counts(5, group.size)
    start = sum(rows[:group.rank])
    embedded, expected = split[0].forward(ids)[0], reference[0].forward(ids)[0][start:start + rows[group.rank]]
    assert embedded.shape == expected.shape, (embedded.shape, expected.shape)
    norm, reference_norm = split[1].body[0], reference[1].body[0]
    worst = max(float(numpy.abs(embedded - expected).max(initial=0.0)),
                float(numpy.abs(norm.forward(embedded)[0] - reference_norm.forward(expected)[0]).max(initial=0.0)))
    say(f"T={group.size} layer norms on each rank's shard of the rows max_abs_diff={worst:.3e}")


def check_cross_entropy(group, say) -> None:
    """Against CrossEntropyLoss on the whole logits, for a vocabulary that T does not divide (with T=4 and 5 ids
    the last rank holds none)."""
    rng = numpy.random.default_rng(3)
    worst = 0.0
    for vocab in (VOCAB, 5):
        logits = rng.standard_normal((5, 7, vocab)) * 3
        targets = rng.integers(0, vocab, size=(5, 7))
        targets[1, 2:5] = IGNORE
        start, stop = vocab_shard(vocab, group.size, group.rank)
        for reduction in ("mean", "sum", "none"):
            reference = nn.CrossEntropyLoss(ignore_index=IGNORE, reduction=reduction)
            ours = VocabParallelCrossEntropy(group, ignore_index=IGNORE, reduction=reduction)
            expected = reference(logits.reshape(-1, vocab), targets.reshape(-1))
            value = ours(numpy.ascontiguousarray(logits[..., start:stop]), targets)
            grad_output = rng.standard_normal(targets.shape) if reduction == "none" else None
            expected_grad = reference.backward(grad_output=None if grad_output is None else grad_output.reshape(-1))
            grad = ours.backward(grad_output=grad_output)
            worst = max(worst, float(numpy.abs(numpy.reshape(value, -1) - numpy.reshape(expected, -1)).max()),
                        float(numpy.abs(grad - expected_grad.reshape(5, 7, vocab)[..., start:stop]).max(initial=0.0)))
    say(f"T={group.size} vocab-parallel cross-entropy max_abs_diff={worst:.3e}")


def check_adamw_steps(group, say) -> None:
    reference, split = whole_gpt(), split_gpt(group)
    losses = (NextTokenLoss(ignore_index=IGNORE), VocabParallelCrossEntropy(group, ignore_index=IGNORE))
    optimizers = [nn.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1) for model in (reference, split)]
    worst = 0.0
    for step in range(STEPS):
        ids, targets = batch(10 + step)
        for model, loss_fn, optimizer in zip((reference, split), losses, optimizers):
            one_step(model, loss_fn, ids, targets, 0)
            optimizer.step()
    worst = largest_difference(full_state_dict(split), {k: v for k, v in reference.state_dict().items()}, "state")
    say(f"T={group.size} {STEPS} AdamW steps max_abs_diff={worst:.3e}")


def check_heads_error(group, say) -> None:
    nn.manual_seed(SEED)
    try:
        tensor_parallel_gpt(gpt(VOCAB, CONTEXT, 1, 3, 12, dtype=numpy.float64), group,
                            sequence_parallel=SEQUENCE_PARALLEL)
    except ValueError as error:
        assert "3 heads" in str(error) and f"{group.size} ranks" in str(error), error
        say(f"T={group.size} heads error: {error}")
        return
    raise AssertionError("3 heads split over the group without an error")


def check_pipeline(group, say, stages: int) -> float:
    """Two Trainer steps of the split GPT in a Pipeline (replicas when the world holds several groups) against
    one process; the checkpoint they write loads into a single-process GPT."""
    world = Communicator(MPI.COMM_WORLD)
    path = world.bcast_object(tempfile.mkdtemp() if world.rank == 0 else None)
    checkpoint = os.path.join(path, "tp.ckpt")
    reference = whole_gpt()
    expected = _fit(reference, NextTokenLoss(ignore_index=IGNORE), None)
    pipe = Pipeline(split_gpt(group), micro_batches=2, stages=stages)
    history = _fit(pipe, VocabParallelCrossEntropy(group, ignore_index=IGNORE), checkpoint)
    world.barrier()
    state = pipe.consolidated_state_dict()
    worst = max(abs(ours[key] - theirs[key]) for ours, theirs in zip(history, expected)
                for key in ("loss", "val_loss"))
    if world.rank == 0:
        worst = max(worst, largest_difference(state, reference.state_dict(), "pipeline state"))
        loaded = whole_gpt()
        loaded.load_state_dict(read_checkpoint(checkpoint, loaded)["model"])
        ids, targets = batch(99)
        loss_fn = NextTokenLoss(ignore_index=IGNORE)
        worst = max(worst, abs(loss_fn(loaded(ids), targets) - loss_fn(reference(ids), targets)))
    say(f"T={group.size} stages={stages} replicas={pipe.replicas} trainer and checkpoint max_abs_diff={worst:.3e}")
    return worst


def check_whole_gpt_over_two_stages(say) -> None:
    """The GPT without tensor parallelism cut into 2 stages (embedding and tied head apart) against one process."""
    reference, pipe = whole_gpt(), Pipeline(whole_gpt(), micro_batches=2, stages=2)
    expected = _fit(reference, NextTokenLoss(ignore_index=IGNORE), None)
    history = _fit(pipe, NextTokenLoss(ignore_index=IGNORE), None)
    state = pipe.consolidated_state_dict()
    worst = max(abs(ours[key] - theirs[key]) for ours, theirs in zip(history, expected)
                for key in ("loss", "val_loss"))
    if state is not None:
        worst = max(worst, largest_difference(state, reference.state_dict(), "two stages"))
    say(f"whole GPT over 2 stages max_abs_diff={worst:.3e}")


def check_resume(group, say) -> None:
    """Checkpoints with optimizer state cross layouts: one process resumes the split GPT's first epoch, the split
    GPT resumes one process's, and both end where two epochs in one process end."""
    world = Communicator(MPI.COMM_WORLD)
    path = world.bcast_object(tempfile.mkdtemp() if world.rank == 0 else None)
    split_checkpoint = os.path.join(path, "split.ckpt")
    single_checkpoint = os.path.join(path, f"single{world.rank}.ckpt")
    reference = whole_gpt()
    _fit(reference, NextTokenLoss(ignore_index=IGNORE), None)
    pipe = Pipeline(split_gpt(group), micro_batches=2, stages=1)
    _fit(pipe, VocabParallelCrossEntropy(group, ignore_index=IGNORE), split_checkpoint, epochs=1)
    world.barrier()
    single = whole_gpt()
    _fit(single, NextTokenLoss(ignore_index=IGNORE), None, resume_from=split_checkpoint)
    worst = largest_difference(single.state_dict(), reference.state_dict(), "one process after the split epoch")
    first = whole_gpt()
    _fit(first, NextTokenLoss(ignore_index=IGNORE), single_checkpoint, epochs=1)
    resumed = Pipeline(split_gpt(group), micro_batches=2, stages=1)
    _fit(resumed, VocabParallelCrossEntropy(group, ignore_index=IGNORE), None, resume_from=single_checkpoint)
    state = resumed.consolidated_state_dict()
    if world.rank == 0:
        worst = max(worst, largest_difference(state, reference.state_dict(), "split after the one-process epoch"))
    say(f"T={group.size} resume across layouts max_abs_diff={worst:.3e}")


def _fit(strategy, loss_fn, checkpoint, epochs: int = 2, resume_from=None):
    ids, targets = batch(5, rows=8, ignore=False)
    replicas, replica = getattr(strategy, "replicas", 1), getattr(strategy, "replica", 0)
    loader = nn.DataLoader(nn.ArrayDataset(ids, targets), 4 // replicas, rank=replica, world_size=replicas)
    val_loader = nn.DataLoader(nn.ArrayDataset(*batch(6, rows=5, ignore=False)), 3, rank=replica, world_size=replicas,
                               uneven="keep")
    optimizer = nn.optim.AdamW(strategy.parameters(), lr=1e-2, weight_decay=0.1)
    trainer = nn.Trainer(strategy, loss_fn, optimizer, clip_grad_norm=0.5, quiet=True, progress=False,
                         checkpoint_path=checkpoint)
    return trainer.fit(loader, epochs, val_loader, resume_from=resume_from)


def check_checkpoint_round_trip(group, say) -> None:
    """A tensor-parallel GPT's full state loads into one process, and a single-process state into it."""
    split = split_gpt(group)
    state = full_state_dict(split)
    single = whole_gpt()
    nn.manual_seed(SEED + 1)
    other = gpt(VOCAB, CONTEXT, LAYERS, HEADS, EMBED, dtype=numpy.float64)
    load_full_state_dict(split, other.state_dict())
    ids, targets = batch(4)
    loss = VocabParallelCrossEntropy(group, ignore_index=IGNORE)(split(ids), targets)
    expected = NextTokenLoss(ignore_index=IGNORE)(other(ids), targets)
    worst = max(largest_difference(state, single.state_dict(), "full state"), abs(loss - expected))
    say(f"T={group.size} full state round trip max_abs_diff={worst:.3e}")


def main() -> None:
    size = int(sys.argv[1])
    world = MPI.COMM_WORLD
    group = tensor_parallel_group(size)
    say = print if world.rank == 0 else (lambda *_: None)
    if world.size == size:
        for dropout in (0.0, 0.1):
            check_gradients(group, say, dropout)
        if SEQUENCE_PARALLEL:
            for rows in (size - 1, size + 1):
                check_gradients(group, say, 0.1, rows)
            check_shard_rows(group, say)
        check_cross_entropy(group, say)
        check_adamw_steps(group, say)
        check_heads_error(group, say)
        check_checkpoint_round_trip(group, say)
    check_pipeline(group, say, stages=1)
    if world.size == 4 and size == 2:
        check_pipeline(group, say, stages=2)
    if world.size == 2:
        check_whole_gpt_over_two_stages(say)
    if world.size == size:
        check_resume(group, say)
    finished = world.gather(world.rank, root=0)
    for rank in finished or []:
        say(f"rank {rank} ok")


if __name__ == "__main__":
    main()
