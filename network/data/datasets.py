"""Real data sets from local files only: scikit-learn's digits, MNIST-1D (generated), MNIST IDX files, .npz, CSV."""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import random
import warnings
from typing import Any

import numpy

from mpiprop.network.checks import DAMAGED_NPZ_ERRORS, float_dtype
from mpiprop.network.data.idx import read_idx

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SOURCES = {
    "MNIST": "https://yann.lecun.com/exdb/mnist/ (or any mirror)",
    "Fashion-MNIST": "https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
}
_INT64_LIMIT = 2.0 ** 63


class MissingArrayError(KeyError, ValueError):
    """An .npz file lacks an asked-for array: a KeyError like a missing dict key, and a ValueError like bad input."""

    def __str__(self) -> str:
        return str(self.args[0])


def load_digits(dtype=numpy.float32) -> tuple[numpy.ndarray, numpy.ndarray]:
    """scikit-learn's 1,797 handwritten 8x8 digits (shipped inside scikit-learn; no download).

    The file is read straight from scikit-learn's installed data folder, without importing
    scikit-learn (whose import costs seconds in every rank).

    Returns:
        x of shape (1797, 64), pixel values scaled from 0..16 to [0, 1]; y of shape (1797,), int64 labels 0..9.

    Raises:
        ImportError: when scikit-learn is missing.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn "
                          "(or pip install mpiprop[examples])")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    table = numpy.loadtxt(path, delimiter=",", dtype=numpy.float64)
    return (table[:, :-1] / 16.0).astype(dtype), table[:, -1].astype(numpy.int64)



def load_mnist1d(split: str = "train", *, num_samples: int = 5000, seed: int = 42,
                 dtype=numpy.float32) -> tuple[numpy.ndarray, numpy.ndarray]:
    """MNIST-1D (Greydanus, 2020): 1-D signals of length 40 of ten digit templates, generated on this machine.

    The `mnist1d` package's own generator (`mnist1d.data.make_dataset` with `get_dataset_args()`)
    builds the set from its templates; nothing is downloaded. With the defaults it is the paper's
    set: 5,000 signals, the first 4,000 for training and the last 1,000 for testing. The global
    random states of numpy and `random`, which that generator reseeds, are restored afterwards.

    Args:
        split: "train" or "test".
        num_samples: signals in both splits together (80% train).
        seed: the generator's seed (42 is the paper's).
        dtype: dtype of the returned signals.

    Returns:
        x of shape (n, 40), standardised over the whole set as the generator does; y of shape (n,),
        int64 labels 0..9.

    Raises:
        ImportError: when the mnist1d package is missing.
        ValueError: for an unknown split.
    """
    if not isinstance(split, str) or split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dtype = float_dtype(dtype, "load_mnist1d dtype")
    x, y = _generated_mnist1d(int(num_samples), int(seed))[split]
    return x.astype(dtype), y.copy()


@functools.lru_cache(maxsize=4)
def _generated_mnist1d(num_samples: int, seed: int) -> dict[str, tuple[numpy.ndarray, numpy.ndarray]]:
    if importlib.util.find_spec("mnist1d") is None:
        raise ImportError("load_mnist1d needs the mnist1d package: pip install mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    numpy_state, python_state = numpy.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        numpy.random.set_state(numpy_state)
        random.setstate(python_state)
    return {"train": (data["x"], data["y"].astype(numpy.int64)),
            "test": (data["x_test"], data["y_test"].astype(numpy.int64))}

def load_mnist(directory: str | os.PathLike, split: str = "train", *, name: str = "MNIST",
               dtype=numpy.float32) -> tuple[numpy.ndarray, numpy.ndarray]:
    """MNIST-format IDX files from `directory`, raw or gzip-compressed (never downloaded).

    Args:
        directory: folder holding e.g. train-images-idx3-ubyte(.gz) and train-labels-idx1-ubyte(.gz).
        split: "train" or "test" (the t10k-* files).
        name: data set name used in error messages ("MNIST" or "Fashion-MNIST").
        dtype: dtype of the returned images.

    Returns:
        x of shape (n, rows * cols) scaled to [0, 1]; y of shape (n,), int64 labels.

    Raises:
        FileNotFoundError: naming the files, the folder and where to get them.
        ValueError: for an unknown split, a file that is not IDX, labels that are not one integer per
            image, or images and labels that disagree in count.
        TypeError: for a dtype that is not a floating type.
    """
    if not isinstance(split, str) or split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    dtype = float_dtype(dtype, "load_mnist dtype")
    image_name, label_name = MNIST_FILES[split]
    image_path, label_path = _find_idx(directory, image_name, name), _find_idx(directory, label_name, name)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim == 0:
        raise ValueError(f"{image_path} holds a single number, not images; it should hold an (n, rows, cols) array")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{label_path} holds a {labels.dtype} array of shape {labels.shape}; {name} labels are "
                         "one integer per image (shape (n,)); check that the images and labels files are not swapped")
    if len(images) != len(labels):
        raise ValueError(f"{name} {split} files in {directory} disagree: {len(images)} images but {len(labels)} labels")
    x = images.reshape(len(images), math.prod(images.shape[1:])).astype(dtype)
    x /= 255
    return x, labels.astype(numpy.int64)


def load_fashion_mnist(directory: str | os.PathLike, split: str = "train",
                       dtype=numpy.float32) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Fashion-MNIST (same IDX file names and layout as MNIST) from `directory`; see `load_mnist`."""
    return load_mnist(directory, split, name="Fashion-MNIST", dtype=dtype)


def _find_idx(directory: str | os.PathLike, base_name: str, name: str) -> str:
    for candidate in (base_name, base_name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    source = _SOURCES.get(name, "the data set's home page")
    raise FileNotFoundError(
        f"{name} file {base_name} (or {base_name}.gz) is not in {os.path.abspath(directory)}; "
        f"download the four IDX files from {source} and put them, raw or gzip-compressed, in that folder")


def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> tuple[numpy.ndarray, numpy.ndarray]:
    """Arrays `x_key` and `y_key` from a .npz file (loaded without pickle), with the same number of rows.

    Raises:
        FileNotFoundError: when there is no file at `path`.
        MissingArrayError: (a KeyError and a ValueError) naming the keys the file holds when one is missing.
        ValueError: when the file is not a readable .npz archive, or x and y differ in rows.
    """
    with _open_npz(path) as archive:
        missing = [key for key in (x_key, y_key) if key not in archive.files]
        if missing:
            raise MissingArrayError(f"{path} has no array {missing[0]!r}; it holds {archive.files}; "
                                    "pass x_key=/y_key=")
        x, y = _read_npz_array(archive, x_key, path), _read_npz_array(archive, y_key, path)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"{path} holds {x_key!r} of shape {x.shape} and {y_key!r} of shape {y.shape}; "
                         "they need the same number of rows (samples)")
    return x, y


def _open_npz(path: str | os.PathLike) -> numpy.lib.npyio.NpzFile:
    try:
        loaded = numpy.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except DAMAGED_NPZ_ERRORS as error:
        raise ValueError(f"{path} is not a readable .npz file ({error}); "
                         "write one with numpy.savez(path, x=x, y=y)") from None
    if not isinstance(loaded, numpy.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array (.npy format), not an .npz archive of x and y; "
                         "write one with numpy.savez(path, x=x, y=y)")
    return loaded


def _read_npz_array(archive: numpy.lib.npyio.NpzFile, key: str, path: str | os.PathLike) -> numpy.ndarray:
    try:
        return archive[key]
    except DAMAGED_NPZ_ERRORS as error:
        raise ValueError(f"{path}: array {key!r} cannot be read ({error}); the file is corrupt or holds "
                         "Python objects, which are not loaded for safety") from None


def load_csv(path: str | os.PathLike, label_column: int = -1, *, delimiter: str | None = ",", skip_header: int = 0,
             dtype=numpy.float32) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Features and integer labels from a numeric CSV file, the labels in column `label_column`.

    Raises:
        FileNotFoundError: when there is no file at `path`.
        TypeError: for a label_column or skip_header that is not an integer, a delimiter that is neither a
            string nor None (any whitespace), or a dtype that is not a floating type.
        ValueError: for a delimiter that is not one character, or when the file is not a numeric table,
            holds no rows or fewer than 2 columns, has no column `label_column`, or holds labels that are
            not integers.
    """
    _check_csv_options(label_column, delimiter, skip_header)
    dtype = float_dtype(dtype, "load_csv dtype")
    table = _read_numeric_table(path, delimiter, skip_header)
    columns = table.shape[1]
    if columns < 2:
        raise ValueError(f"{path} has {columns} column(s); it needs features and a label column")
    if not -columns <= label_column < columns:
        raise ValueError(f"label_column {label_column} is outside the {columns} columns of {path}; "
                         f"use 0..{columns - 1} or a negative index such as -1 for the last")
    labels = table[:, label_column]
    if not numpy.array_equal(labels, numpy.round(labels)) or not (numpy.abs(labels) < _INT64_LIMIT).all():
        raise ValueError(f"{path} column {label_column} holds non-integer values; it must hold class labels")
    features = numpy.delete(table, label_column, axis=1)
    return features.astype(dtype), labels.astype(numpy.int64)


def _check_csv_options(label_column: Any, delimiter: Any, skip_header: Any) -> None:
    """Raise unless label_column and skip_header are integers and delimiter is one character or None."""
    for name, value in (("label_column", label_column), ("skip_header", skip_header)):
        if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)):
            raise TypeError(f"load_csv {name} must be an integer, got {value!r}")
    if skip_header < 0:
        raise ValueError(f"load_csv skip_header must be >= 0, got {skip_header}")
    if delimiter is None:
        return
    if not isinstance(delimiter, str):
        raise TypeError(f"load_csv delimiter must be a string (or None for any whitespace), got {delimiter!r}")
    if len(delimiter) != 1 or delimiter in "\r\n":
        raise ValueError(f"load_csv delimiter must be one character other than a line break, got {delimiter!r}")


def _read_numeric_table(path: str | os.PathLike, delimiter: str | None, skip_header: int) -> numpy.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input contained no data", category=UserWarning)
            table = numpy.loadtxt(path, delimiter=delimiter, skiprows=skip_header, ndmin=2, dtype=numpy.float64)
    except FileNotFoundError:
        raise
    except ValueError as error:  # also UnicodeDecodeError
        raise ValueError(f"{path} is not a numeric CSV table with delimiter {delimiter!r}: {error}") from None
    if table.size == 0:
        raise ValueError(f"{path} holds no rows of data after skipping {skip_header} header line(s)")
    return table
