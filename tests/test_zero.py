"""Sharded optimizer state (ZeRO-1, ZeRO-2): shard assignment, errors, and real mpiexec runs against one process."""
from __future__ import annotations

import json
import re

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.distributed.data_parallel.gradient_sync import GradientSync
from mpiprop.distributed.data_parallel.parameter_shards import shard_owners
from mpiprop.distributed.data_parallel.sharded_optimizer import ShardedOptimizer
from mpiprop.network.layers.parameter import Parameter
from mpi_launch import run_mpi

CHECKS = ("equivalent", "zero-to-one", "one-to-zero", "zero-to-dp", "nan-skipped")


def test_each_rank_owns_the_parameters_whose_middle_lies_in_its_quarter():
    # 1088 elements; middles at 128, 264, 400, 536, 672, 808, 944, 1080; quarters end at 272, 544, 816
    assert shard_owners([256, 16] * 4, 4) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_owners_never_decrease_and_a_large_parameter_is_owned_whole():
    assert shard_owners([10, 1000, 10, 10], 2) == [0, 0, 1, 1]
    assert shard_owners([5, 5], 4) == [1, 3]
    assert shard_owners([7], 3) == [1]


def test_shard_owners_refuses_no_ranks():
    with pytest.raises(ValueError, match="at least 1 rank, got 0"):
        shard_owners([3], 0)


def test_data_parallel_refuses_an_unknown_sharding():
    with pytest.raises(ValueError, match=r"shard_optimizer_state must be 0 .* got 3"):
        DataParallel(nn.Sequential(nn.Linear(2, 2)), shard_optimizer_state=3)


def test_reduce_scattered_gradients_refuse_compression():
    with pytest.raises(ValueError, match=r"cannot be compressed \(compression='float16'\)"):
        DataParallel(nn.Sequential(nn.Linear(2, 2)), compression="float16", shard_optimizer_state=2)


def test_reduce_scatter_refuses_owners_out_of_rank_order():
    dp = DataParallel(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"owners \[1, 0\] decrease"):
        GradientSync([Parameter(numpy.zeros(2)), Parameter(numpy.zeros(2))], dp.comm, owners=[1, 0])


def test_optimizer_without_sharding_is_the_plain_class():
    dp = DataParallel(nn.Sequential(nn.Linear(2, 2)))
    assert type(dp.optimizer(nn.optim.SGD, lr=0.1)) is nn.optim.SGD


def train_one_rank(build, shard: int, optimizer_class, **hyperparameters):
    """Three steps of `build()` (float64) as a one-rank DataParallel with `shard_optimizer_state=shard`."""
    dp = DataParallel(build().to(dtype=numpy.float64), shard_optimizer_state=shard)
    optimizer = dp.optimizer(optimizer_class, **hyperparameters)
    x = numpy.linspace(-1, 1, 15).reshape(5, 3)
    loss_fn = nn.MSELoss()
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(dp(x), x[:, :2])
        dp.backward(loss_fn.backward())
        optimizer.step()
    return dp, optimizer


def test_one_rank_sharded_training_equals_plain_training_and_refuses_foreign_parameters():
    def train(shard):
        nn.manual_seed(1)
        return train_one_rank(lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), shard,
                              nn.optim.Adam, lr=0.1)

    plain, _ = train(0)
    for shard in (1, 2):
        sharded, optimizer = train(shard)
        assert isinstance(optimizer, ShardedOptimizer)
        for p, q in zip(sharded.parameters(), plain.parameters()):
            numpy.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match="not in the data-parallel model; build the optimizer from dp.parameters()"):
        sharded.optimizer(nn.optim.SGD, [Parameter(numpy.zeros(2))], lr=0.1)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, nodes", [(2, None), (4, None), (4, "2")])
def test_sharded_training_and_checkpoints_match_one_process(ranks, nodes, tmp_path):
    result = run_mpi("zero_equivalence.py", ranks, str(tmp_path), timeout=300, env={"MPIPROP_PRETEND_NODES": nodes})
    found = re.findall(r"ZERO-OK (\S+) (zero\S+) (\w+) ranks=(\d+) max_abs_diff=(\S+)", result.stdout)
    expected = [(check, layout, optimizer) for layout in ("zero1", "zero2", "zero2-mpi") for optimizer in ("SGD", "Adam")
                for check in CHECKS]
    assert [(check, layout, optimizer) for check, layout, optimizer, _, _ in found] == expected, result.stdout
    assert all(int(size) == ranks and float(difference) < 1e-6 for *_, size, difference in found)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_optimizer_state_per_rank_is_one_nth_of_data_parallel(ranks):
    result = run_mpi("zero_memory.py", ranks)
    reported = dict(re.findall(r"ZERO-MEMORY shard=(\d) optimizer_state=(\[[0-9, ]+\])", result.stdout))
    # 4 x Linear(16, 16): 4 x (256 + 16) = 1088 float64 values; Adam keeps two arrays per value
    whole = 1088 * 8 * 2
    assert json.loads(reported["0"]) == [whole] * ranks
    assert json.loads(reported["1"]) == [whole // ranks] * ranks
    assert json.loads(reported["2"]) == [whole // ranks] * ranks


def test_a_dev_shm_without_room_for_the_parameters_means_a_warning_and_mpi_allgather(monkeypatch):
    import mpiprop.distributed.transport.shared_memory_room as windows
    import mpiprop.distributed.data_parallel.parameter_allgather_shared as shared
    from mpiprop.distributed.data_parallel.parameter_allgather import ParameterAllgather
    from mpiprop.distributed.data_parallel.sharded_optimizer import _parameter_allgather

    dp = DataParallel(nn.Sequential(nn.Linear(100, 100)))
    monkeypatch.setattr(windows, "free_shared_memory_bytes", lambda: 2**20)  # 1 MiB; 100x100 float32 need 1.25 x 40 kB
    assert shared.parameter_window_shortage(dp.parameters(), dp.owner_of, dp.comm) is None
    monkeypatch.setattr(windows, "free_shared_memory_bytes", lambda: 20_000)
    with pytest.warns(RuntimeWarning, match=r"/dev/shm on rank 0 has 0 MiB free, less than 1.25 x the 0 MiB .* "
                                            r"shared_memory=False"):
        allgather = _parameter_allgather([dp.parameters()], dp.owner_of, dp.comm, shared_memory=True)
    assert isinstance(allgather, ParameterAllgather)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("kind", ["shared memory reduce-scatter", "mpi reduce-scatter"])
def test_zero2_keeps_each_rank_s_own_gradients_and_a_few_whole_buckets_during_backward(ranks, kind):
    result = run_mpi("zero2_gradients.py", ranks, *(["--mpi"] if kind.startswith("mpi") else []), timeout=180)
    line = next(line for line in result.stdout.splitlines() if line.startswith("ZERO2-GRADIENTS "))
    figures = json.loads(line[len("ZERO2-GRADIENTS "):])
    layer_bytes = (128 + 128 * 128) * 8
    assert len(figures) == ranks
    for rank in figures:
        assert rank["buckets"] == 12 and rank["own_bytes"] == 12 // ranks * layer_bytes, rank
        assert rank["kind"] == kind and rank["slot_bytes"] == rank["slot_bytes_expected"], rank
        assert rank["from_arrays"] == rank["own_bytes"] + rank["zero_elements_bytes"], rank
        assert rank["memory_report"] == rank["own_bytes"], rank
        assert rank["held"] == rank["held_expected"], rank
        assert rank["peak_held"] <= rank["peak_allowed"], rank  # own share and 3 of the 12 buckets (the slots)
        assert rank["traced_peak_beyond_zero1"] <= rank["traced_allowed"], rank
        assert rank["others_read_zero"], rank
    difference = float(re.search(r"ZERO2-ACCUMULATION max_abs_diff=(\S+)", result.stdout).group(1))
    assert difference < 1e-6


def sharded_bucket_of_two():
    """Rank 0 of 2 owns `mine` (3 values), rank 1 `theirs` (2 values); float64."""
    from mpiprop.distributed.data_parallel.sharded_gradient_bucket import GradientBytes, ShardedGradientBucket

    mine, theirs = Parameter(numpy.zeros(3)), Parameter(numpy.zeros((1, 2)))
    held = GradientBytes()
    return mine, theirs, held, ShardedGradientBucket([mine, theirs], [0, 1], rank=0, ranks=2, gradient_bytes=held)


def test_a_sharded_bucket_is_whole_only_from_materialize_to_release():
    mine, theirs, held, bucket = sharded_bucket_of_two()
    assert held.now == (3 + 2 + 1) * 8  # own gradients, two flags, the zero element
    assert theirs.grad.shape == (1, 2) and not theirs.grad.any()
    mine.grad += 1.0  # kept: copied into the whole gradient space
    bucket.materialize()
    assert held.now == (3 + 2 + 1 + 5) * 8 and bucket.full.tolist() == [1, 1, 1, 0, 0]
    theirs.grad += 2.0
    assert bucket.full.tolist() == [1, 1, 1, 2, 2]
    bucket.own[...] = [5, 6, 7]  # what the reduce-scatter writes
    bucket.release()
    assert held.now == (3 + 2 + 1) * 8 and held.peak == (3 + 2 + 1 + 5) * 8 and bucket.full is None
    assert mine.grad.tolist() == [5, 6, 7] and not theirs.grad.any()
    bucket.scale(2.0)
    mine.zero_grad()
    theirs.zero_grad()
    assert not mine.grad.any() and not theirs.grad.any() and bucket.rebound_parameter() is None


def test_a_value_written_into_a_gradient_the_rank_does_not_hold_is_refused_at_the_next_backward():
    _, theirs, _, bucket = sharded_bucket_of_two()
    theirs.grad += 1.5
    with pytest.raises(RuntimeError, match=r"rank 0 does not own was written outside backward \(it reads 1.5\).*"
                                           r"zero_grad\(\)"):
        bucket.materialize()
    theirs.zero_grad()
    bucket.materialize()
    assert bucket.full.tolist() == [0, 0, 0, 0, 0]


def test_zero2_over_a_layer_that_is_not_a_sequential_matches_plain_training():
    def train(shard):
        nn.manual_seed(2)
        return train_one_rank(lambda: nn.Linear(3, 2), shard, nn.optim.SGD, lr=0.1, momentum=0.9)[0]

    sharded, plain = train(2), train(0)
    for p, q in zip(sharded.parameters(), plain.parameters()):
        numpy.testing.assert_array_equal(p.data, q.data)
    # one rank owns all 8 gradient values; two flags and the zero element stay beside them
    assert sharded.gradient_sync.held_bytes == (8 + 2 + 1) * 8 == sharded.gradient_sync.peak_held_bytes - 8 * 8


@pytest.mark.mpi
def test_a_rank_writing_a_gradient_it_does_not_own_ends_the_job_with_the_fix():
    result = run_mpi("zero2_foreign_gradient.py", 2, timeout=60, check=False)
    assert result.returncode != 0
    assert re.search(r"RuntimeError: a gradient of a parameter that rank 1 does not own was written outside backward "
                     r"\(it reads 2\.0\).*call zero_grad\(\) before the next backward", result.stderr), result.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("slow_readers", [False, True])
def test_zero2_in_shared_slots_equals_one_process_with_slots_reused_and_no_sync_steps(ranks, slow_readers):
    arguments = ["--slow-readers"] if slow_readers else []
    result = run_mpi("zero2_shared_slots.py", ranks, *arguments, timeout=180)
    found = re.search(r"ZERO2-SLOTS kind=(\S+) buckets=(\d+) shared_buckets=(\d+) ranks=(\d+) max_abs_diff=(\S+)",
                      result.stdout)
    assert found, result.stdout
    kind, buckets, shared_buckets, size, difference = found.groups()
    assert kind == "shared-memory-reduce-scatter" and int(size) == ranks
    assert int(buckets) == 10 and int(shared_buckets) == 6 * 10  # every bucket of every step went through a slot
    assert float(difference) < 1e-6


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_zero2_with_a_bucket_holding_its_slot_all_backward_mixes_slots_and_mpi_and_equals_one_process(ranks):
    result = run_mpi("zero2_shared_slots.py", ranks, "--tied", "--slow-readers", timeout=180)
    found = re.search(r"ZERO2-SLOTS kind=(\S+) buckets=(\d+) shared_buckets=(\d+) ranks=(\d+) max_abs_diff=(\S+)",
                      result.stdout)
    assert found, result.stdout
    kind, buckets, shared_buckets, _, difference = found.groups()
    assert kind == "shared-memory-reduce-scatter" and 0 < int(shared_buckets) < 6 * int(buckets)
    assert float(difference) < 1e-6


@pytest.mark.mpi
def test_zero2_without_room_in_dev_shm_for_its_slots_warns_once_and_reduce_scatters_with_mpi():
    result = run_mpi("zero2_small_shm.py", 2, timeout=60)
    for rank, warned in ((0, 1), (1, 0)):
        assert f"rank {rank} ok kind=mpi-reduce-scatter warnings={warned}" in result.stdout, result.stdout


def test_bucket_b_takes_slot_b_mod_count_each_slot_as_large_as_its_largest_bucket_on_cache_lines():
    from mpiprop.distributed.data_parallel.gradient_slots import slot_count, slot_offsets

    assert slot_count(10, 3) == 3 and slot_count(2, 3) == 2 and slot_count(0, 3) == 1
    # slot 0 holds buckets 0 and 3 (100, 200 bytes), slot 1 bucket 1 (300), slot 2 bucket 2 (50); 64-byte lines
    assert slot_offsets([100, 300, 50, 200], 3) == ([0, 256, 576], 640)


def test_a_sharded_bucket_in_lent_space_counts_no_bytes_and_moving_into_it_frees_its_own():
    mine, theirs, held, bucket = sharded_bucket_of_two()
    mine.grad += 1.0
    space = numpy.full(5, 9.0)
    bucket.materialize(space)  # own values in place, zeros elsewhere, in the lent space
    assert bucket.full is space and bucket.full_is_lent and space.tolist() == [1, 1, 1, 0, 0]
    assert held.now == (3 + 2 + 1) * 8
    theirs.grad += 2.0
    assert space.tolist() == [1, 1, 1, 2, 2]
    bucket.release()
    assert held.now == (3 + 2 + 1) * 8 and not bucket.full_is_lent and mine.grad.tolist() == [1, 1, 1]

    bucket.materialize()
    theirs.grad += 3.0
    assert held.now == (3 + 2 + 1 + 5) * 8 and not bucket.full_is_lent
    other_space = numpy.zeros(5)
    bucket.move_into(other_space)
    assert held.now == (3 + 2 + 1) * 8 and bucket.full is other_space and other_space.tolist() == [1, 1, 1, 3, 3]
    assert theirs.grad.tolist() == [[3, 3]]
    with pytest.raises(RuntimeError, match="memory of its own can move into lent space"):
        bucket.move_into(numpy.zeros(5))


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_clip_grad_norm_of_zero2_parameters_clips_by_the_norm_over_every_ranks_share(ranks):
    result = run_mpi("zero2_clip.py", ranks, timeout=180)
    assert sorted(re.findall(r"CLIP-OK rank=(\d)", result.stdout)) == [str(rank) for rank in range(ranks)]
