"""Tensor-parallel GPT: real mpiexec runs against one process, and single-process units of cutting and joining."""
import re

import numpy
import pytest
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Communicator
from mpiprop.distributed.tensor_parallel import (
    HeadParallelSelfAttention, VocabParallelCrossEntropy, VocabParallelEmbedding, VocabParallelTiedLinear,
    full_state_dict, tensor_parallel_gpt, tensor_parallel_group,
)
from mpiprop.distributed.tensor_parallel.sequence_parallel import shard_counts
from mpiprop.distributed.tensor_parallel.sequence_parallel_layers import (
    SequenceParallelDropout, SequenceParallelLayerNorm, SequenceParallelTokenPositionEmbedding,
)
from mpiprop.distributed.tensor_parallel.split import Split, cut_share
from mpiprop.distributed.tensor_parallel.vocab_parallel_embedding import vocab_shard
from mpiprop.network.models.gpt import gpt
from mpiprop.network.models.next_token_loss import NextTokenLoss
from mpiprop.network.training.shares import joined
from mpi_launch import run_mpi

TOLERANCE = 1e-10
CHECKS_ALONE = ("dropout=0.0 loss and gradients", "dropout=0.1 loss and gradients", "vocab-parallel cross-entropy",
                "3 AdamW steps", "full state round trip", "stages=1 replicas=1 trainer and checkpoint",
                "resume across layouts")


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, size, sequence_parallel", [(2, 2, False), (4, 4, False), (4, 2, False),
                                                             (2, 2, True), (4, 4, True), (4, 2, True)])
def test_split_gpt_equals_one_process(ranks, size, sequence_parallel):
    flags = ["sequence-parallel"] if sequence_parallel else []
    output = run_mpi("tp_gpt_equivalence.py", ranks, str(size), *flags, timeout=300).stdout
    checks = CHECKS_ALONE if ranks == size else (f"stages=1 replicas={ranks // size} trainer and checkpoint",
                                                 "stages=2 replicas=1 trainer and checkpoint")
    if sequence_parallel and ranks == size:  # fewer rows than ranks, and rows the ranks do not divide
        checks += (f"dropout=0.1 rows={size - 1} loss and gradients", f"dropout=0.1 rows={size + 1} loss and gradients",
                   "layer norms on each rank's shard of the rows")
    for check in checks:
        match = re.search(rf"T={size} {re.escape(check)} max_abs_diff=(\S+)", output)
        assert match and float(match.group(1)) <= TOLERANCE, (check, output)
    if ranks == 2:
        match = re.search(r"whole GPT over 2 stages max_abs_diff=(\S+)", output)
        assert match and float(match.group(1)) <= TOLERANCE, output
    if ranks == size:
        assert f"has 3 heads, which do not split over a tensor-parallel group of {size} ranks" in output
    assert sorted(re.findall(r"rank (\d+) ok", output)) == [str(rank) for rank in range(ranks)]


@pytest.fixture(scope="module")
def alone() -> Communicator:
    return tensor_parallel_group(1, Communicator(MPI.COMM_SELF))


@pytest.mark.parametrize("vocab, ranks", [(13, 2), (13, 4), (5, 4), (8, 4), (3, 4)])
def test_vocabulary_shards_cover_the_ids_once_in_order(vocab, ranks):
    shards = [vocab_shard(vocab, ranks, rank) for rank in range(ranks)]
    assert shards[0][0] == 0 and shards[-1][1] == vocab
    assert all(stop == start for (_, stop), (start, _) in zip(shards, shards[1:]))
    assert all(0 <= stop - start <= -(-vocab // ranks) for start, stop in shards)


@pytest.mark.parametrize("whole, axis, ranks, blocks", [((13, 3), 0, 4, 1), ((13, 3), 0, 2, 1), ((4, 12), 1, 2, 3),
                                                         ((12,), 0, 4, 3), ((8, 5), 0, 4, 1)])
def test_shares_cut_with_padding_or_blocks_join_back(whole, axis, ranks, blocks):
    value = numpy.arange(numpy.prod(whole), dtype=float).reshape(whole) + 1
    split = Split(axis, whole, ranks, blocks)
    shares = [cut_share(value, split, rank) for rank in range(ranks)]
    assert all(share.shape == split.share_shape() for share in shares)
    assert sum(int((share == 0).sum()) for share in shares) == ranks * split.share_length * \
        numpy.prod(whole) // whole[axis] - value.size
    numpy.testing.assert_array_equal(joined(shares, whole, blocks), value)
    numpy.testing.assert_array_equal(joined([{"exp_avg": share} for share in shares], whole, blocks)["exp_avg"], value)


def test_fused_shares_hold_each_ranks_q_k_and_v_columns():
    q, k, v = (numpy.full((2, 4), fill) for fill in (1.0, 2.0, 3.0))
    q[:, 2:], k[:, 2:], v[:, 2:] = 10, 20, 30
    share = cut_share(numpy.concatenate([q, k, v], axis=1), Split(1, (2, 12), 2, 3), 1)
    numpy.testing.assert_array_equal(share[0], [10, 10, 20, 20, 30, 30])


def tiny_gpt(seed: int = 0, **overrides) -> nn.Sequential:
    nn.manual_seed(seed)
    sizes = dict(vocab_size=11, context_length=6, num_layers=1, num_heads=2, embed_dim=8)
    sizes.update(overrides)
    return gpt(**sizes, dtype=numpy.float64)


@pytest.mark.parametrize("rows, ranks", [(4, 2), (5, 2), (1, 2), (7, 4), (3, 4), (0, 3)])
def test_shards_of_rows_cover_them_in_order_as_array_split_cuts_them(rows, ranks):
    assert shard_counts(rows, ranks) == [len(part) for part in numpy.array_split(numpy.arange(rows), ranks)]


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_a_group_of_one_rank_is_the_whole_gpt(alone, sequence_parallel):
    whole = tiny_gpt(dropout=0.1)
    split = tensor_parallel_gpt(tiny_gpt(dropout=0.1), alone, sequence_parallel=sequence_parallel)
    kinds = {type(layer) for layer in split.descendants()}
    assert {HeadParallelSelfAttention, VocabParallelEmbedding, VocabParallelTiedLinear} <= kinds
    assert split[-1].weight is split[0].wte.weight
    region = {SequenceParallelDropout, SequenceParallelLayerNorm, SequenceParallelTokenPositionEmbedding}
    assert region <= kinds if sequence_parallel else not region & kinds
    whole.eval(), split.eval()
    ids = numpy.random.default_rng(0).integers(0, 11, size=(3, 6))
    targets = numpy.roll(ids, -1, axis=1)
    targets[0, 0] = -100
    assert VocabParallelCrossEntropy(alone)(split(ids), targets) == pytest.approx(
        NextTokenLoss()(whole(ids), targets), abs=TOLERANCE)
    state = full_state_dict(split)
    assert state.keys() == whole.state_dict().keys()
    assert all(numpy.array_equal(state[name], value) for name, value in whole.state_dict().items())


def test_sequence_parallelism_refuses_a_layer_it_cannot_run_on_a_shard_of_the_rows(alone):
    layers = list(tiny_gpt().layers)
    model = nn.Sequential(*layers[:-2], nn.Linear(8, 8), *layers[-2:])
    with pytest.raises(ValueError, match=r"does not know how to do that for Linear\(8, 8.*pass sequence_parallel=False"):
        tensor_parallel_gpt(model, alone, sequence_parallel=True)
    assert tensor_parallel_gpt(model, alone)[-3] is model[-3]


def test_wrong_arguments_are_named(alone):
    with pytest.raises(TypeError, match="Communicator"):
        tensor_parallel_gpt(tiny_gpt(), object())
    with pytest.raises(TypeError, match="Sequential"):
        tensor_parallel_gpt(tiny_gpt()[0], alone)
    with pytest.raises(TypeError, match="VocabParallelEmbedding"):
        VocabParallelTiedLinear(tiny_gpt()[0].wte)
    loss = VocabParallelCrossEntropy(alone)
    with pytest.raises(ValueError, match=r"target ids from 0 to 11 but the vocabulary has 11 ids"):
        loss(numpy.zeros((2, 3, 11)), numpy.array([[0, 1, 2], [3, 4, 11]]))
    with pytest.raises(ValueError, match=r"integer target ids of shape \(2, 3\)"):
        loss(numpy.zeros((2, 3, 11)), numpy.zeros((2, 4), dtype=int))
