"""Data sets from local files (IDX raw and gzip, digits, .npz, CSV), splitting, standardisation, synthetic data."""
import gzip
import struct
from pathlib import Path

import numpy
import pytest

from mpiprop.network.data.datasets import load_csv, load_digits, load_fashion_mnist, load_mnist, load_npz
from mpiprop.network.data.idx import read_idx, write_idx
from mpiprop.network.data.preprocessing import Standardizer, train_val_split
from mpiprop.network.data.synthetic import synthetic_classification, synthetic_regression


def idx_bytes(type_code, shape, payload):
    """An IDX file built by hand from the format description (big-endian sizes)."""
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def write_tiny_mnist(directory, split="train", compress=False, count=3):
    images = numpy.arange(count * 4 * 5, dtype=numpy.uint8).reshape(count, 4, 5) * 2
    labels = numpy.arange(count, dtype=numpy.uint8) % 10
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if compress else ""
    for name, array, code in ((f"{prefix}-images-idx3-ubyte", images, 0x08), (f"{prefix}-labels-idx1-ubyte", labels, 0x08)):
        content = idx_bytes(code, array.shape, array.tobytes())
        opener = gzip.open if compress else open
        with opener(directory / (name + suffix), "wb") as stream:
            stream.write(content)
    return images, labels


def test_read_idx_parses_a_hand_built_file(tmp_path):
    path = tmp_path / "values.idx"
    path.write_bytes(idx_bytes(0x0B, (2, 3), struct.pack(">6h", 1, -2, 300, 4, -500, 6)))
    numpy.testing.assert_array_equal(read_idx(path), [[1, -2, 300], [4, -500, 6]])
    assert read_idx(path).dtype == numpy.int16


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_then_read_idx_round_trips(tmp_path, dtype, name):
    array = (numpy.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / name, array)
    result = read_idx(tmp_path / name)
    assert result.dtype == array.dtype
    numpy.testing.assert_array_equal(result, array)


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "short.idx"
    path.write_bytes(idx_bytes(0x08, (4, 4), bytes(10)))
    with pytest.raises(ValueError, match="short.idx.*truncated"):
        read_idx(path)


def test_idx_header_with_a_zero_and_huge_dimensions_names_the_file(tmp_path):
    """No data bytes are needed for a zero-sized array, but numpy refuses the shape (found by hypothesis)."""
    path = tmp_path / "huge.idx"
    path.write_bytes(idx_bytes(0x08, (0, 2**31, 2**31, 2**31), b""))
    with pytest.raises(ValueError, match=r"huge.idx announces an IDX array of shape \(0, 2147483648, .*corrupt"):
        read_idx(path)


def test_non_idx_file_is_rejected(tmp_path):
    path = tmp_path / "text.idx"
    path.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_reads_raw_and_gzip_files(tmp_path, compress):
    images, labels = write_tiny_mnist(tmp_path, "test", compress)
    x, y = load_mnist(tmp_path, "test")
    assert x.shape == (3, 20) and x.dtype == numpy.float32
    numpy.testing.assert_allclose(x, images.reshape(3, 20) / 255.0, rtol=1e-6)
    numpy.testing.assert_array_equal(y, labels)
    assert y.dtype == numpy.int64


def test_missing_mnist_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_fashion_mnist(tmp_path, "train")
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path) in message
    assert "Fashion-MNIST" in message and "fashion-mnist" in message


def test_mnist_images_and_labels_must_agree(tmp_path):
    write_tiny_mnist(tmp_path, "train", count=3)
    write_idx(tmp_path / "train-labels-idx1-ubyte", numpy.zeros(2, dtype=numpy.uint8))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        load_mnist(tmp_path)


def test_load_digits_is_the_scikit_learn_set_scaled_to_unit_range():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = load_digits()
    reference = datasets.load_digits()
    assert x.shape == (1797, 64) and x.dtype == numpy.float32 and y.dtype == numpy.int64
    numpy.testing.assert_allclose(x * 16.0, reference.data, rtol=1e-6)
    numpy.testing.assert_array_equal(y, reference.target)


def test_load_npz_and_its_missing_key_message(tmp_path):
    numpy.savez(tmp_path / "data.npz", features=numpy.ones((4, 2)), labels=numpy.arange(4))
    x, y = load_npz(tmp_path / "data.npz", x_key="features", y_key="labels")
    assert x.shape == (4, 2) and y.tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="features"):
        load_npz(tmp_path / "data.npz")


def test_load_csv_splits_features_and_labels(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,label\n1,2.5,0\n3,4.25,2\n")
    x, y = load_csv(path, skip_header=1)
    numpy.testing.assert_array_equal(x, [[1.0, 2.5], [3.0, 4.25]])
    assert y.tolist() == [0, 2] and y.dtype == numpy.int64
    x, y = load_csv(path, label_column=0, skip_header=1)
    assert x.tolist() == [[2.5, 0.0], [4.25, 2.0]] and y.tolist() == [1, 3]


def test_load_csv_rejects_fractional_labels(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("1,0.5\n2,1\n")
    with pytest.raises(ValueError, match="non-integer"):
        load_csv(path)


def test_train_val_split_is_a_reproducible_partition():
    x, y = numpy.arange(50).reshape(25, 2), numpy.arange(25)
    (x_train, y_train), (x_val, y_val) = train_val_split(x, y, 0.2, seed=4)
    assert len(y_val) == 5 and len(y_train) == 20
    assert sorted(numpy.concatenate([y_train, y_val]).tolist()) == list(range(25))
    numpy.testing.assert_array_equal(x_val[:, 0], 2 * y_val)
    (_, again), _ = train_val_split(x, y, 0.2, seed=4)
    numpy.testing.assert_array_equal(again, y_train)


def test_train_val_split_rejects_a_fraction_leaving_nothing():
    with pytest.raises(ValueError, match="empty part"):
        train_val_split(numpy.zeros((3, 1)), numpy.zeros(3), 0.1)


def test_standardizer_uses_training_statistics_and_handles_constant_features():
    x = numpy.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]], dtype=numpy.float32)
    scaler = Standardizer().fit(x)
    z = scaler.transform(x)
    numpy.testing.assert_allclose(z[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    numpy.testing.assert_array_equal(z[:, 1], 0.0)
    assert z.dtype == numpy.float32
    numpy.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-6)
    restored = Standardizer()
    restored.load_state_dict(scaler.state_dict())
    numpy.testing.assert_array_equal(restored.transform(x), z)


def test_standardizer_must_be_fitted_first():
    with pytest.raises(RuntimeError, match="fit"):
        Standardizer().transform(numpy.zeros((2, 2)))


def test_synthetic_classification_is_balanced_seeded_and_separable():
    x, y = synthetic_classification(300, 5, 3, seed=2, separation=10.0)
    assert x.shape == (300, 5) and x.dtype == numpy.float32
    assert numpy.bincount(y).tolist() == [100, 100, 100]
    numpy.testing.assert_array_equal(synthetic_classification(300, 5, 3, seed=2, separation=10.0)[0], x)
    centres = numpy.stack([x[y == c].mean(axis=0) for c in range(3)])
    nearest = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert (nearest == y).mean() > 0.95


def test_synthetic_regression_follows_a_linear_model():
    x, y = synthetic_regression(400, 3, 2, seed=1, noise=0.01)
    weights, *_ = numpy.linalg.lstsq(x, y, rcond=None)
    assert numpy.abs(x @ weights - y).max() < 0.1


def damage_npy_headers(path):
    """Rewrite every member of the .npz at `path` with an array header numpy cannot parse (found by hypothesis)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content.replace(b"), }", b"), |", 1))


def set_member_flags(path, name, flag_bits):
    """Set the general-purpose flag bits of member `name` in the .npz's central directory (found by hypothesis)."""
    content = bytearray(Path(path).read_bytes())
    entry = content.index(b"PK\x01\x02")
    while content[entry + 46:entry + 46 + len(name)] != name.encode():
        entry = content.index(b"PK\x01\x02", entry + 4)
    content[entry + 8:entry + 10] = flag_bits.to_bytes(2, "little")
    Path(path).write_bytes(bytes(content))


@pytest.mark.parametrize("flag_bits, zipfile_says", [(0x1, "encrypted"), (0x40, "strong encryption"),
                                                     (0x20, "compressed patched data")])
def test_npz_member_with_flags_zip_cannot_honour_names_the_file(tmp_path, flag_bits, zipfile_says):
    path = tmp_path / "data.npz"
    numpy.savez(path, x=numpy.arange(3), y=numpy.arange(3))
    set_member_flags(path, "y.npy", flag_bits)
    with pytest.raises(ValueError, match=f"{path}: array 'y' cannot be read .*{zipfile_says}"):
        load_npz(path)


def test_npz_with_a_damaged_array_header_names_the_file(tmp_path):
    path = tmp_path / "data.npz"
    numpy.savez(path, x=numpy.arange(3), y=numpy.arange(3))
    damage_npy_headers(path)
    with pytest.raises(ValueError, match=f"{path}: array 'x' cannot be read"):
        load_npz(path)
