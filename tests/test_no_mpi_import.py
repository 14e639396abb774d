"""Importing any mpiprop module has no side effect: needs no mpi4py, starts no MPI, thread or handler, loads no numba."""
from __future__ import annotations

import json
import os
import subprocess
import sys

TIMEOUT_S = 300
IMPORT_EVERYTHING = r"""
import importlib, json, pkgutil, signal, sys, threading
{prelude}
def handlers():
    return {{signum.name: repr(signal.getsignal(signum)) for signum in signal.Signals
             if signum not in (signal.SIGKILL, signal.SIGSTOP)}}
before = (handlers(), repr(sys.excepthook), repr(threading.excepthook))
failures, imported = {{}}, []
def load(name):
    try:
        imported.append(importlib.import_module(name).__name__)
    except BaseException as error:
        failures[name] = f"{{type(error).__name__}}: {{error}}"
for package in ("mpiprop.network", "mpiprop.distributed", "mpiprop.launch"):
    load(package)
    for info in pkgutil.walk_packages(getattr(sys.modules.get(package), "__path__", []), package + "."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # running the command line is what importing it does
            load(info.name)
after = (handlers(), repr(sys.excepthook), repr(threading.excepthook))
print(json.dumps({{"imported": imported, "failures": failures,
                  "threads": [thread.name for thread in threading.enumerate()],
                  "handlers_changed": sorted(name for name in before[0] if before[0][name] != after[0][name]),
                  "hooks_changed": before[1:] != after[1:],
                  "mpi_loaded": "mpi4py.MPI" in sys.modules, "numba_loaded": "numba" in sys.modules}}))
"""
WITHOUT_MPI4PY = "sys.modules['mpi4py'] = None  # `import mpi4py` now raises ImportError"


def import_everything(prelude: str = "") -> dict:
    """Import every module of mpiprop in a fresh Python outside any MPI job; what happened, as a dict."""
    outside_a_job = {name: value for name, value in os.environ.items()
                     if not name.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL", "HYDRA_"))}
    completed = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING.format(prelude=prelude)],
                               capture_output=True, text=True, timeout=TIMEOUT_S, env=outside_a_job,
                               stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def check_no_side_effects(report: dict) -> None:
    assert report["failures"] == {}
    assert len(report["imported"]) > 100, report["imported"]  # the walk reached every sub-package
    assert {"mpiprop.distributed", "mpiprop.distributed.pipeline.schedule_registry", "mpiprop.launch.model_command",
            "mpiprop.distributed.transport.communicator"} <= set(report["imported"])
    assert report["threads"] == ["MainThread"]
    assert report["handlers_changed"] == [] and not report["hooks_changed"]
    assert not report["numba_loaded"]  # compiled loops load numba at their first use, not at import


def test_every_module_imports_without_mpi4py_and_changes_nothing():
    report = import_everything(WITHOUT_MPI4PY)
    check_no_side_effects(report)
    assert not report["mpi_loaded"]


def test_importing_every_module_with_mpi4py_present_does_not_start_mpi():
    """Importing mpi4py.MPI initialises MPI, so MPI started iff that module was imported."""
    report = import_everything()
    check_no_side_effects(report)
    assert not report["mpi_loaded"]


def test_without_mpi4py_the_first_collective_says_how_to_install_an_mpi_library():
    code = f"import sys; {WITHOUT_MPI4PY}\nimport mpiprop.distributed\nmpiprop.distributed.start()"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith(
        "ImportError: mpiprop.distributed needs an MPI library, and none could be loaded"), completed.stderr
    assert "pip install 'mpiprop[mpich]'" in completed.stderr
