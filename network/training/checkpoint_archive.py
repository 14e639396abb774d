"""Read a checkpoint's .npz members with every header checked before anything is decompressed or allocated."""
from __future__ import annotations

import math
import zipfile
from typing import Callable

import numpy
from numpy.lib import format as npy_format


NPY_SUFFIX = ".npy"
MAX_NPY_HEADER_BYTES = 10_000
ALLOWED_KINDS = "biufcU"  # booleans, integers, floats, complex numbers, text: never objects or records
ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


class ArchiveRefused(ValueError):
    """A member whose header promises something the file, the format or the memory budget does not allow."""


def read_members(path: str, max_bytes: int, check_member: Callable[[str, tuple, numpy.dtype], None]
                 ) -> dict[str, numpy.ndarray]:
    """Every member of the .npz archive at `path`, by name without ".npy".

    Before any data is read, each member's header is checked: a known compression, a
    plain dtype, a shape whose bytes plus header equal the member's size in the zip
    directory, `check_member(name, shape, dtype)` (which raises to refuse), and all members
    together at most `max_bytes`. Reading then stops at the size the header promised, so a
    compressed member that inflates further is never expanded past it (zip's CRC flags it).

    Raises:
        ArchiveRefused: for a header that breaks one of those rules, naming the member.
        DAMAGED_NPZ_ERRORS: for a damaged archive (from zipfile, zlib and numpy's header parser).
    """
    with zipfile.ZipFile(path) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        headers = {info.filename: _checked_header(archive, info, check_member) for info in members}
        total = sum(header[2] for header in headers.values())
        if total > max_bytes:
            raise ArchiveRefused(f"its arrays would take {total} bytes, more than the {max_bytes} allowed")
        return {_array_name(info.filename): _read_data(archive, info, *headers[info.filename]) for info in members}


def _array_name(member: str) -> str:
    return member[:-len(NPY_SUFFIX)] if member.endswith(NPY_SUFFIX) else member


def _checked_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                    check_member: Callable[[str, tuple, numpy.dtype], None]) -> tuple[tuple, numpy.dtype, int, bool]:
    """(shape, dtype, data bytes, Fortran order) of a member, once its header passes every check."""
    name = info.filename
    if info.compress_type not in ALLOWED_COMPRESSION:
        raise ArchiveRefused(f"member {name!r} uses zip compression method {info.compress_type}; "
                             "only stored and deflated members are read")
    with archive.open(info) as stream:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream, max_header_size=MAX_NPY_HEADER_BYTES)
        else:
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream, max_header_size=MAX_NPY_HEADER_BYTES)
        header_bytes = stream.tell()
    if (dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None
            or dtype.itemsize == 0):
        raise ArchiveRefused(f"member {name!r} holds arrays of dtype {dtype}, which checkpoints never contain")
    if any(extent < 0 for extent in shape):
        raise ArchiveRefused(f"member {name!r} claims the impossible shape {shape}")
    data_bytes = math.prod(shape) * dtype.itemsize
    if header_bytes + data_bytes != info.file_size:
        raise ArchiveRefused(f"member {name!r} claims shape {shape} of {dtype} ({data_bytes} bytes) but holds "
                             f"{info.file_size - header_bytes} bytes of data")
    check_member(_array_name(name), shape, dtype)
    return shape, dtype, data_bytes, fortran


def _read_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple, dtype: numpy.dtype,
               data_bytes: int, fortran: bool) -> numpy.ndarray:
    buffer = numpy.empty(data_bytes, dtype=numpy.uint8)
    with archive.open(info) as stream:
        stream.seek(info.file_size - data_bytes)  # past the header, which was read and checked before
        if stream.readinto(memoryview(buffer)) != data_bytes or stream.read(1):
            raise EOFError(f"member {info.filename!r} ends before its {data_bytes} bytes of data")
    return buffer.view(dtype).reshape(shape, order="F" if fortran else "C")
