"""ArrayDataset, DataLoader and sharding: coverage per epoch, reproducible shuffles, shard policies."""
import numpy
import pytest
from hypothesis import given, settings, strategies as st

from mpiprop.network.data.loader import ArrayDataset, DataLoader, epoch_order, shard


def loader_over(n, batch_size, **kwargs):
    x = numpy.arange(n, dtype=numpy.float32).reshape(n, 1)
    return DataLoader(ArrayDataset(x, numpy.arange(n)), batch_size, **kwargs)


def epoch_labels(loader, epoch, start=0):
    return [y for _, y in loader.batches(epoch, start)]


def test_dataset_rejects_arrays_of_different_lengths():
    with pytest.raises(ValueError, match=r"\[3, 4\]"):
        ArrayDataset(numpy.zeros(3), numpy.zeros(4))


def test_dataset_indexes_all_arrays_together():
    x, y = numpy.arange(10).reshape(5, 2), numpy.arange(5) * 10
    xs, ys = ArrayDataset(x, y)[numpy.array([4, 1])]
    numpy.testing.assert_array_equal(xs, [[8, 9], [2, 3]])
    numpy.testing.assert_array_equal(ys, [40, 10])


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_exactly_once_per_epoch(shuffle):
    loader = loader_over(23, 5, shuffle=shuffle, seed=3)
    for epoch in range(3):
        labels = numpy.concatenate(epoch_labels(loader, epoch))
        assert sorted(labels.tolist()) == list(range(23))
    assert [len(y) for y in epoch_labels(loader, 0)] == [5, 5, 5, 5, 3]
    assert len(loader) == 5


def test_inputs_and_targets_stay_paired_after_shuffling():
    loader = loader_over(17, 4, shuffle=True, seed=1)
    for x, y in loader.batches(2):
        numpy.testing.assert_array_equal(x[:, 0], y.astype(numpy.float32))


def test_shuffle_changes_per_epoch_and_reproduces_from_seed():
    first, again, other_seed = (loader_over(50, 50, shuffle=True, seed=s) for s in (7, 7, 8))
    epoch0, epoch1 = epoch_labels(first, 0)[0], epoch_labels(first, 1)[0]
    assert not numpy.array_equal(epoch0, epoch1)
    numpy.testing.assert_array_equal(epoch1, epoch_labels(again, 1)[0])
    assert not numpy.array_equal(epoch1, epoch_labels(other_seed, 1)[0])


def test_iterating_the_loader_follows_set_epoch():
    loader = loader_over(30, 30, shuffle=True, seed=2)
    loader.set_epoch(4)
    numpy.testing.assert_array_equal(next(iter(loader))[1], epoch_labels(loader, 4)[0])


def test_drop_last_skips_the_short_batch():
    loader = loader_over(23, 5, drop_last=True)
    assert len(loader) == 4
    assert [len(y) for y in epoch_labels(loader, 0)] == [5, 5, 5, 5]


def test_batches_from_a_start_resume_the_same_epoch():
    loader = loader_over(40, 6, shuffle=True, seed=5)
    whole = epoch_labels(loader, 3)
    for got, expected in zip(epoch_labels(loader, 3, start=4), whole[4:], strict=True):
        numpy.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_are_disjoint_and_cover_an_evenly_divisible_epoch(world_size):
    shards = [loader_over(24, 4, shuffle=True, seed=9, rank=r, world_size=world_size) for r in range(world_size)]
    parts = [numpy.concatenate(epoch_labels(s, 1)) for s in shards]
    together = numpy.concatenate(parts)
    assert sorted(together.tolist()) == list(range(24))
    assert len({len(s) for s in shards}) == 1


def test_keep_policy_gives_disjoint_covering_shards_of_uneven_sizes():
    parts = [shard(numpy.arange(10), r, 4, "keep") for r in range(4)]
    assert [p.tolist() for p in parts] == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]


def test_pad_policy_wraps_around_to_the_start_of_the_order():
    order = numpy.array([5, 3, 8, 0, 9, 1, 7])
    parts = [shard(order, r, 3, "pad") for r in range(3)]
    assert [p.tolist() for p in parts] == [[5, 0, 7], [3, 9, 5], [8, 1, 3]]


def test_drop_policy_leaves_out_the_end_of_the_order():
    order = numpy.array([5, 3, 8, 0, 9, 1, 7])
    parts = [shard(order, r, 3, "drop") for r in range(3)]
    assert [p.tolist() for p in parts] == [[5, 0], [3, 9], [8, 1]]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), world_size=st.integers(1, 5), batch_size=st.integers(1, 9),
       drop_last=st.booleans(), uneven=st.sampled_from(["pad", "drop"]))
def test_pad_and_drop_give_every_rank_the_same_number_of_batches(n, world_size, batch_size, drop_last, uneven):
    shards = [loader_over(n, batch_size, shuffle=True, seed=1, drop_last=drop_last, rank=r, world_size=world_size,
                          uneven=uneven) for r in range(world_size)]
    counts = {len(epoch_labels(s, 2)) for s in shards}
    assert counts == {len(shards[0])}
    seen = numpy.concatenate([numpy.concatenate(epoch_labels(s, 2) or [numpy.array([], int)]) for s in shards])
    if uneven == "pad" and not drop_last:
        assert set(seen.tolist()) == set(range(n))
        assert len(seen) == world_size * -(-n // world_size)
    if uneven == "drop":
        assert len(set(seen.tolist())) == len(seen)


def test_rank_batches_together_make_the_single_process_batch():
    world_size, batch_size = 3, 4
    single = loader_over(36, batch_size * world_size, shuffle=True, seed=11)
    shards = [loader_over(36, batch_size, shuffle=True, seed=11, rank=r, world_size=world_size)
              for r in range(world_size)]
    per_rank = [epoch_labels(s, 1) for s in shards]
    for number, expected in enumerate(epoch_labels(single, 1)):
        together = numpy.concatenate([batches[number] for batches in per_rank])
        assert sorted(together.tolist()) == sorted(expected.tolist())


def test_epoch_order_is_the_identity_without_shuffle():
    numpy.testing.assert_array_equal(epoch_order(5, 3, seed=1, shuffle=False), numpy.arange(5))


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 2, "world_size": 2}, r"rank must be an integer in \[0, 2\)"),
    ({"uneven": "spread"}, "uneven must be one of"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_loader_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loader_over(10, 2, **kwargs)


def test_loader_needs_a_dataset():
    with pytest.raises(TypeError, match="ArrayDataset"):
        DataLoader(numpy.zeros((3, 2)), 2)
