"""Shared fixtures: the array modules (numpy, and cupy where a GPU is present) that tests run on.

Also a sweep at the end of the run: every process the tests start inherits TEST_RUN_VARIABLE,
and any such process still alive then (a rank that outlived its job) is reported and killed,
so that no test can leave work running after pytest.
"""
from __future__ import annotations

import os

import numpy
import pytest

from mpiprop.launch.job_processes import kill_processes, processes_with
from mpiprop.network import backend
from mpiprop.network.compute import cpu_kernels
from processes import command_line

TEST_RUN_VARIABLE = "MPIPROP_TEST_RUN"
os.environ[TEST_RUN_VARIABLE] = str(os.getpid())


def _array_module_params() -> list:
    cupy_mark = pytest.mark.skipif(
        not backend.cupy_available(),
        reason="cupy is not installed or sees no GPU; the cupy variant of this test needs both",
    )
    return [pytest.param("numpy", id="numpy"), pytest.param("cupy", id="cupy", marks=cupy_mark)]


@pytest.fixture(params=_array_module_params())
def xp(request):
    """The array module under test: numpy, or cupy where `mpiprop.network.backend.cupy_available()`."""
    return numpy if request.param == "numpy" else backend.module_for_device("cuda")


def _cpu_loop_params() -> list:
    numba_mark = pytest.mark.skipif(not cpu_kernels.available(), reason="numba is not installed (mpiprop[numba])")
    return [pytest.param("numba", id="numba-loops", marks=numba_mark), pytest.param("numpy", id="numpy-passes")]


@pytest.fixture(params=_cpu_loop_params())
def cpu_loops(request):
    """Runs the test with the layers' numba loops (`cpu_kernels`) and again with numpy's passes only."""
    if request.param == "numba":
        yield request.param
        return
    with cpu_kernels.disabled():
        yield request.param


@pytest.fixture
def device(xp) -> str:
    """The device name ("cpu" or "cuda") that matches `xp`."""
    return "cpu" if xp is numpy else "cuda"


def pytest_sessionfinish(session) -> None:
    survivors = processes_with(TEST_RUN_VARIABLE, os.environ[TEST_RUN_VARIABLE])
    if not survivors:
        return
    described = [f"{pid}: {command_line(pid) or '(gone)'}" for pid in survivors]
    kill_processes(survivors)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"killed {len(survivors)} processes that the tests had started and that outlived them:",
                            yellow=True)
        for line in described:
            reporter.write_line(f"  {line}", yellow=True)

