"""The IDX array format of MNIST and Fashion-MNIST: read and write, raw or gzip-compressed."""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {numpy.dtype(name).str[1:]: code for code, name in _DTYPES.items()}


def read_idx(path: str | os.PathLike) -> numpy.ndarray:
    """Read an IDX file (gzip-compressed when its name ends in .gz) into a native-endian array.

    Raises:
        FileNotFoundError: when there is no file at `path`.
        ValueError: when a .gz file is not valid gzip, the header is not IDX, or the data is shorter or
            longer than the header says.
    """
    content = _read_bytes(path)
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file: its first 4 bytes {content[:4]!r} are not 0, 0, a type "
                         f"code in {sorted(_DTYPES)} and the number of dimensions")
    dtype = numpy.dtype(_DTYPES[content[2]])
    ndim = content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise ValueError(f"{path} is truncated: its header announces {ndim} dimensions but the file has {len(content)} bytes")
    shape = tuple(int(d) for d in numpy.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        raise ValueError(f"{path} holds {len(content)} bytes but an IDX array of shape {shape} and type {dtype} "
                         f"needs {expected}; the file is truncated or corrupt")
    try:
        data = numpy.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    except ValueError as error:  # a zero dimension beside dimensions whose product numpy cannot index
        raise ValueError(f"{path} announces an IDX array of shape {shape}, which numpy cannot make ({error}); "
                         "the header is corrupt") from None
    return data.astype(dtype.newbyteorder("="))


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The content of `path`, decompressed when its name ends in .gz."""
    if not str(path).endswith(".gz"):
        with open(path, "rb") as stream:
            return stream.read()
    with gzip.open(path, "rb") as stream:
        try:
            return stream.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise ValueError(f"{path} is not a valid gzip file ({error}); the download is truncated or corrupt, "
                             "or the file is not compressed and should not end in .gz") from None


def write_idx(path: str | os.PathLike, array: numpy.ndarray) -> None:
    """Write `array` as an IDX file (gzip-compressed when `path` ends in .gz).

    Raises:
        ValueError: for a dtype IDX cannot hold (it holds u1, i1, i2, i4, f4, f8).
    """
    array = numpy.asarray(array)
    key = array.dtype.str[1:]
    if key not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, int32, float32 or float64")
    header = bytes([0, 0, _CODES[key], array.ndim]) + numpy.asarray(array.shape, dtype=">u4").tobytes()
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as stream:
        stream.write(header + body)
