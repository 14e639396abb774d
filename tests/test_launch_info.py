"""mpiprop info: library version strings shortened per vendor, and the printed table."""
from __future__ import annotations

import pytest

from mpiprop.launch.info import format_info, summarize_library_version

MPICH_TEXT = "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25 2026\nMPICH ABI:          18:2:6\n"
OPEN_MPI_TEXT = "Open MPI v4.1.6, package: Debian OpenMPI, ident: 4.1.6, repo rev: v4.1.6, Sep 30, 2023\0"
INTEL_TEXT = "Intel(R) MPI Library 2021.10 for Linux* OS\n"


@pytest.mark.parametrize("text, expected", [(MPICH_TEXT, "MPICH 5.0.2"), (OPEN_MPI_TEXT, "Open MPI 4.1.6"),
                                            (INTEL_TEXT, "Intel(R) MPI Library 2021.10 for Linux* OS"),
                                            ("", "unknown")])
def test_library_version_is_vendor_and_version(text, expected):
    assert summarize_library_version(text) == expected


def test_info_table_aligns_labels_and_spells_out_missing_values():
    lines = format_info({"mpi_library": "MPICH 5.0.2", "cuda_aware_mpi": False, "cupy": None, "gpus": 0}).splitlines()
    assert [line.split("  ")[0].strip() for line in lines] == ["MPI library", "CUDA-aware MPI", "cupy", "GPUs"]
    values = ["MPICH 5.0.2", "no", "not available", "0"]
    assert all(line.endswith("  " + value) for line, value in zip(lines, values))
    assert len({len(line) - len(value) for line, value in zip(lines, values)}) == 1  # one value column
