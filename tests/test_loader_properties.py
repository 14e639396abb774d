"""Property tests: the loaders either return data that keeps their promises or raise a clear error."""
from __future__ import annotations

import gzip
import math
import os
import tempfile
from collections import Counter

import numpy
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from mpiprop.network.data.loader import ArrayDataset, DataLoader, epoch_order, shard
from mpiprop.network.data.datasets import MissingArrayError, load_csv, load_mnist, load_npz
from mpiprop.network.data.idx import read_idx, write_idx
from mpiprop.network.data.preprocessing import Standardizer, train_val_split

CLEAR_ERRORS = (ValueError, TypeError, FileNotFoundError)
LOADER_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILE_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def outcome(call):
    """(result, None) when `call()` works, (None, error) when it raises a clear error; anything else fails."""
    try:
        return call(), None
    except CLEAR_ERRORS as error:
        assert str(error), f"{type(error).__name__} without a message"
        return None, error


def assert_names(error: Exception, *names: object) -> None:
    """The error message mentions one of `names` (a value, a parameter or a file)."""
    message = str(error)
    assert any(str(name) and str(name) in message for name in names), f"{message!r} names none of {names}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the files the examples write; each example makes its own subfolder."""
    return str(tmp_path_factory.mktemp("loader_properties"))


def write(folder: str, name: str, content: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(content)
    return path


# --- DataLoader over valid settings: its promises --------------------------------------------------------------


@LOADER_SETTINGS
@given(n=st.integers(1, 40), world_size=st.integers(1, 7), batch_size=st.integers(1, 12), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**64), epoch=st.integers(0, 10**6),
       uneven=st.sampled_from(["pad", "drop", "keep"]))
def test_loader_shards_cover_the_epoch_as_their_policy_says(n, world_size, batch_size, shuffle, drop_last, seed,
                                                            epoch, uneven):
    x, y = numpy.arange(2 * n, dtype=numpy.float32).reshape(n, 2), numpy.arange(n)
    loaders = [DataLoader(ArrayDataset(x, y), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                          world_size=world_size, uneven=uneven) for rank in range(world_size)]
    per_rank = [list(loader.batches(epoch)) for loader in loaders]
    for loader, batches in zip(loaders, per_rank):
        assert len(batches) == len(loader)
        for batch_x, batch_y in batches:
            assert 1 <= len(batch_y) <= batch_size and (not drop_last or len(batch_y) == batch_size)
            numpy.testing.assert_array_equal(batch_x[:, 0], 2 * batch_y)  # rows stay paired
    if uneven != "keep":
        assert len({len(batches) for batches in per_rank}) == 1, "ranks run different numbers of batches"
    order = epoch_order(n, epoch, seed, shuffle)
    for rank, loader in enumerate(loaders):
        numpy.testing.assert_array_equal(loader.indices(epoch), shard(order, rank, world_size, uneven))
        again = DataLoader(ArrayDataset(x, y), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                           world_size=world_size, uneven=uneven)
        numpy.testing.assert_array_equal(again.indices(epoch), loader.indices(epoch))
    if not drop_last:
        assert_epoch_coverage(per_rank, n, world_size, uneven)


def assert_epoch_coverage(per_rank: list, n: int, world_size: int, uneven: str) -> None:
    seen = Counter(int(label) for batches in per_rank for _, labels in batches for label in labels)
    if uneven == "keep":
        assert seen == Counter(range(n)), "every sample exactly once"
    elif uneven == "drop":
        assert set(seen.values()) <= {1} and len(seen) == n - n % world_size
    else:
        assert set(seen) == set(range(n)) and sum(seen.values()) == world_size * -(-n // world_size)
        assert max(seen.values()) - min(seen.values()) <= 1, "padding repeats samples evenly"


# --- DataLoader and friends over arbitrary settings ------------------------------------------------------------

odd_values = st.one_of(
    st.integers(-3, 12), st.just(True), st.just(False), st.none(), st.just(10**30), st.just(2**63),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
    st.integers(0, 5).map(numpy.int64), st.integers(-2, 5).map(numpy.int32), st.just(numpy.float64(2.0)),
    st.just([1]), st.just(numpy.array([1, 2])),
)


@LOADER_SETTINGS
@given(n=st.integers(0, 12), batch_size=odd_values, seed=odd_values, rank=odd_values, world_size=odd_values,
       uneven=st.sampled_from(["pad", "drop", "keep", "PAD", "", None, 3]) | odd_values, epoch=odd_values,
       start=odd_values)
@example(n=5, batch_size=2, seed=0, rank=3, world_size=10**12, uneven="pad", epoch=0, start=0)  # ranks > samples
@example(n=5, batch_size=2, seed=0, rank=0, world_size=1, uneven="pad", epoch=0, start=-1)  # a negative start batch
@example(n=5, batch_size=2, seed=0, rank=0, world_size=1, uneven="pad", epoch=1.5, start=0)  # a fractional epoch
def test_loader_settings_work_or_are_refused_by_name(n, batch_size, seed, rank, world_size, uneven, epoch, start):
    dataset = ArrayDataset(numpy.arange(n))
    loader, error = outcome(lambda: DataLoader(dataset, batch_size, seed=seed, rank=rank, world_size=world_size,
                                               uneven=uneven, shuffle=True))
    if error is not None:
        assert_names(error, "batch_size", "seed", "rank", "world_size", "uneven", "empty dataset")
        return
    batches, error = outcome(lambda: list(loader.batches(epoch, start)))
    if error is not None:
        assert_names(error, "epoch", "start")
        return
    assert all(1 <= len(labels) <= loader.batch_size for (labels,) in batches)
    assert len(batches) == max(0, len(loader) - int(start))


@LOADER_SETTINGS
@given(arrays=st.lists(st.one_of(
    hnp.arrays(numpy.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    st.lists(st.lists(st.integers(0, 9), max_size=3), max_size=4),
    st.none(), st.text(max_size=3), st.integers(), st.just(numpy.float64(1.5)),
), max_size=3))
def test_array_datasets_of_anything_index_together_or_are_refused(arrays):
    dataset, error = outcome(lambda: ArrayDataset(*arrays))
    if error is not None:
        assert_names(error, "ArrayDataset")
        return
    assert all(len(array) == len(dataset) for array in dataset.arrays)
    if len(dataset):
        assert all(len(part) == 1 for part in dataset[numpy.array([len(dataset) - 1])])


@LOADER_SETTINGS
@given(order=st.one_of(st.lists(st.integers(0, 50), max_size=20).map(numpy.array), st.integers(), st.none(),
                       hnp.arrays(numpy.int64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))),
       rank=odd_values, world_size=odd_values, uneven=st.sampled_from(["pad", "drop", "keep", "odd"]),
       num_samples=st.integers(-3, 50) | st.sampled_from([True, None, 2.0, "5", numpy.int64(4)]), epoch=odd_values,
       seed=odd_values)
def test_shard_and_epoch_order_work_or_are_refused_by_name(order, rank, world_size, uneven, num_samples, epoch, seed):
    part, error = outcome(lambda: shard(order, rank, world_size, uneven))
    if error is not None:
        assert_names(error, "order", "rank", "world_size", "uneven", "empty")
    else:
        assert set(part.tolist()) <= set(numpy.asarray(order).tolist())
    permutation, error = outcome(lambda: epoch_order(num_samples, epoch, seed, shuffle=True))
    if error is not None:
        assert_names(error, "num_samples", "epoch", "seed")
    else:
        assert sorted(permutation.tolist()) == list(range(int(num_samples)))


# --- IDX files ---------------------------------------------------------------------------------------------------


@st.composite
def idx_contents(draw) -> bytes:
    """IDX files, valid or damaged: a header of any dimensions and a body of any length, maybe truncated."""
    code = draw(st.sampled_from(sorted(IDX_TYPES)) | st.integers(0, 255))
    shape = draw(st.lists(st.integers(0, 4) | st.integers(0, 2**32 - 1), max_size=4))
    itemsize = numpy.dtype(IDX_TYPES.get(code, "u1")).itemsize
    body_size = math.prod(shape) * itemsize if math.prod(shape) < 4096 else draw(st.integers(0, 64))
    magic = draw(st.sampled_from([b"\x00\x00", b"\x00\x00", b"\x00\x01", b"PK", b"\x1f\x8b"]))
    content = magic + bytes([code, len(shape)]) + numpy.asarray(shape, dtype=">u4").tobytes()
    content += draw(st.binary(min_size=body_size, max_size=body_size))
    cut = draw(st.none() | st.integers(0, len(content)))
    return content if cut is None else content[:cut]


@FILE_SETTINGS
@given(content=idx_contents() | st.binary(max_size=40), compression=st.sampled_from(["raw", "gzip", "fake .gz",
                                                                                        "cut gzip"]))
@example(content=bytes([0, 0, 8, 4]) + b"\x00\x01\x00\x00" * 4, compression="raw")  # a size above int64
@example(content=b"not gzip", compression="fake .gz")  # a .gz name, no gzip
@example(content=bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]), compression="cut gzip")  # a truncated gzip stream
def test_idx_files_read_with_their_announced_shape_or_are_refused(content, compression, scratch):
    folder = tempfile.mkdtemp(dir=scratch)
    if compression == "raw":
        path = write(folder, "data-idx", content)
    elif compression == "fake .gz":
        path = write(folder, "data-idx.gz", content)
    else:
        packed = gzip.compress(content)
        path = write(folder, "data-idx.gz", packed if compression == "gzip" else packed[:len(packed) // 2])
    array, error = outcome(lambda: read_idx(path))
    if error is not None:
        assert_names(error, path)
        return
    shape = tuple(int(side) for side in numpy.frombuffer(content, ">u4", count=content[3], offset=4))
    assert array.shape == shape and array.dtype == numpy.dtype(IDX_TYPES[content[2]]).newbyteorder("=")


@FILE_SETTINGS
@given(array=hnp.arrays(st.sampled_from(["u1", "i1", "i2", "i4", "f4", "f8"]),
                        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
       name=st.sampled_from(["a-idx", "a-idx.gz"]))
def test_idx_files_round_trip(array, name, scratch):
    path = os.path.join(tempfile.mkdtemp(dir=scratch), name)
    write_idx(path, array)
    numpy.testing.assert_array_equal(read_idx(path), array)


@FILE_SETTINGS
@given(images=hnp.arrays(st.sampled_from(["u1", "f4", "i2"]), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
       labels=hnp.arrays(st.sampled_from(["u1", "i4", "f8"]), hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)),
       missing=st.sampled_from([None, "images", "labels"]), gzipped=st.booleans(),
       split=st.sampled_from(["train", "test", "valid", "", None, 0, ("train",)]),
       dtype=st.sampled_from([numpy.float32, numpy.float64, numpy.int64, "float16", "no-such-type"]))
@example(images=numpy.array(7, "u1"), labels=numpy.array(7, "u1"), missing=None, gzipped=False, split="train",
         dtype=numpy.float32)  # scalars instead of arrays
def test_mnist_folders_load_as_pairs_or_are_refused(images, labels, missing, gzipped, split, dtype, scratch):
    folder = tempfile.mkdtemp(dir=scratch)
    suffix = ".gz" if gzipped else ""
    if missing != "images":
        write_idx(os.path.join(folder, "train-images-idx3-ubyte" + suffix), images)
    if missing != "labels":
        write_idx(os.path.join(folder, "train-labels-idx1-ubyte" + suffix), labels)
    loaded, error = outcome(lambda: load_mnist(folder, split, dtype=dtype))
    if error is not None:
        assert_names(error, folder, "split", "dtype", "no-such-type")
        return
    x, y = loaded
    assert x.ndim == 2 and y.ndim == 1 and len(x) == len(y) and y.dtype == numpy.int64
    assert x.dtype == numpy.dtype(dtype) and numpy.dtype(dtype).kind == "f"


# --- .npz files --------------------------------------------------------------------------------------------------


@st.composite
def npz_contents(draw, folder: str) -> bytes:
    """.npz archives, valid or damaged: arrays under some of the keys x, y, z, then maybe truncated or corrupted."""
    keys = draw(st.sets(st.sampled_from(["x", "y", "z"])))
    arrays = {key: draw(hnp.arrays(st.sampled_from(["f4", "i8", "u1"]),
                                   hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4)))
              for key in keys}
    if draw(st.booleans()) and keys:
        arrays[draw(st.sampled_from(sorted(keys)))] = numpy.array([1, "a", None], dtype=object)
    if arrays:
        path = os.path.join(folder, "draft.npz")
        save = numpy.savez_compressed if draw(st.booleans()) else numpy.savez
        save(path, **arrays)
    else:  # a single-array .npy file under an .npz name
        path = os.path.join(folder, "draft.npy")
        numpy.save(path, numpy.arange(3))
    with open(path, "rb") as handle:
        content = bytearray(handle.read())
    damage = draw(st.sampled_from(["none", "cut", "flip"]))
    if damage == "cut":
        content = content[:draw(st.integers(0, len(content)))]
    elif damage == "flip" and content:
        position = draw(st.integers(0, len(content) - 1))
        content[position] ^= draw(st.integers(1, 255))
    return bytes(content)


@FILE_SETTINGS
@given(data=st.data(), keys=st.sampled_from([("x", "y"), ("x", "z"), ("w", "y")]))
def test_npz_files_load_as_pairs_or_are_refused(data, keys, scratch):
    folder = tempfile.mkdtemp(dir=scratch)
    content = data.draw(npz_contents(folder) | st.binary(max_size=40))
    path = write(folder, "data.npz", content)
    loaded, error = outcome(lambda: load_npz(path, *keys))
    if error is not None:
        assert_names(error, path)
        if isinstance(error, MissingArrayError):
            assert_names(error, *(repr(key) for key in keys))
        return
    x, y = loaded
    assert x.ndim >= 1 and y.ndim >= 1 and len(x) == len(y)


def test_npz_missing_file_is_a_file_not_found_error(scratch):
    with pytest.raises(FileNotFoundError, match="nothing-here.npz"):
        load_npz(os.path.join(scratch, "nothing-here.npz"))


# --- CSV files ---------------------------------------------------------------------------------------------------

cells = st.one_of(st.integers(-5, 9).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["", " ", "1e300", "-1e400", "nan", "inf", "2.5", "a", '"3"', "#", "0x1", "\x00"]),
                  st.text(max_size=3))


@st.composite
def csv_contents(draw) -> bytes:
    """CSV files: rows of cells (numbers mostly, some text), maybe ragged, maybe with a header, maybe binary."""
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    width = draw(st.integers(1, 4))
    rows = [[draw(cells) if draw(st.integers(0, 9)) == 0 else str(draw(st.integers(0, 5)))
             for _ in range(width + (draw(st.integers(-1, 1)) if draw(st.integers(0, 9)) == 0 else 0))]
            for _ in range(draw(st.integers(0, 5)))]
    text = "\n".join(delimiter.join(row) for row in rows)
    if draw(st.booleans()):
        text = delimiter.join(f"column{i}" for i in range(width)) + "\n" + text
    encoded = text.encode("utf-8", "surrogatepass")
    return encoded if draw(st.integers(0, 9)) else draw(st.binary(max_size=30))


@FILE_SETTINGS
@given(content=csv_contents(), label_column=st.integers(-5, 5) | st.sampled_from([True, None, "label", 1.0]),
       skip_header=st.integers(-1, 2) | st.sampled_from([False, "1", 1.5]),
       delimiter=st.sampled_from([",", ";", "\t", " ", "", ",,", "\n", None, 5, b","]))
def test_csv_files_load_as_features_and_labels_or_are_refused(content, label_column, skip_header, delimiter, scratch):
    path = write(tempfile.mkdtemp(dir=scratch), "table.csv", content)
    loaded, error = outcome(lambda: load_csv(path, label_column, delimiter=delimiter, skip_header=skip_header))
    if error is not None:
        assert_names(error, path, "label_column", "skip_header", "delimiter")
        return
    x, y = loaded
    assert x.ndim == 2 and y.ndim == 1 and len(x) == len(y) >= 1 and x.shape[1] >= 1
    assert y.dtype == numpy.int64 and x.dtype == numpy.float32


# --- train/validation split and standardisation ------------------------------------------------------------------


@LOADER_SETTINGS
@given(n_x=st.integers(0, 30), n_y=st.integers(0, 30), as_list=st.booleans(),
       val_fraction=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0, 1, True, "0.2", None]),
       seed=odd_values)
def test_train_val_split_partitions_or_is_refused(n_x, n_y, as_list, val_fraction, seed):
    x, y = numpy.arange(n_x) * 10, numpy.arange(n_y)
    if as_list:
        x, y = x.tolist(), y.tolist()
    split, error = outcome(lambda: train_val_split(x, y, val_fraction, seed=seed))
    if error is not None:
        assert_names(error, "val_fraction", "seed", "rows", repr(val_fraction))
        return
    (x_train, y_train), (x_val, y_val) = split
    assert len(y_train) >= 1 and len(y_val) >= 1
    assert sorted(numpy.concatenate([y_train, y_val]).tolist()) == list(range(n_y))
    numpy.testing.assert_array_equal(numpy.asarray(x_val), 10 * numpy.asarray(y_val))
    (_, again), _ = train_val_split(x, y, val_fraction, seed=seed)
    numpy.testing.assert_array_equal(again, y_train)


def test_train_val_split_refuses_scalars_by_name():
    with pytest.raises(ValueError, match="x must be an array"):
        train_val_split(3, [1, 2])


@LOADER_SETTINGS
@given(x=hnp.arrays(numpy.float64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                    elements=st.integers(-1000, 1000).map(float) | st.sampled_from([numpy.nan, numpy.inf])),
       other_features=st.integers(0, 6))
def test_standardizer_centres_and_scales_or_is_refused(x, other_features):
    scaler, error = outcome(lambda: Standardizer().fit(x))
    if error is not None:
        assert_names(error, "Standardizer", "NaN", str(x.shape))
        return
    z = scaler.transform(x)
    numpy.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-6)
    assert numpy.all((numpy.abs(z.std(axis=0) - 1) < 1e-6) | (numpy.abs(z).max(axis=0) < 1e-6))
    numpy.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-6, atol=1e-6)
    wrong = numpy.ones((2, other_features))
    if wrong.shape[1:] != x.shape[1:]:
        with pytest.raises(ValueError, match="Standardizer was fitted on features of shape"):
            scaler.transform(wrong)


@pytest.mark.parametrize("state", [{}, {"mean": [0.0]}, {"mean": [0.0], "std": [1.0, 2.0]}, None, [1, 2]])
def test_standardizer_state_must_hold_matching_mean_and_std(state):
    with pytest.raises(ValueError, match="Standardizer state"):
        Standardizer().load_state_dict(state)

