"""What `mpiprop info` reports: MPI library and flavour, mpi4py, CUDA-awareness, cupy, NCCL, GPUs, cores, BLAS."""
from __future__ import annotations

import datetime
import importlib
import platform
from typing import Any

from mpiprop.launch.mpiexec import choose_launcher
from mpiprop.launch.runner import available_cores


def summarize_library_version(text: str) -> str:
    """Shorten `MPI.Get_library_version()` to vendor and version, e.g. "MPICH 5.0.2" or "Open MPI 4.1.6"."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown"
    first = lines[0]
    if first.startswith("MPICH Version:"):
        return "MPICH " + first.split(":", 1)[1].strip()
    if first.startswith("Open MPI v"):
        return "Open MPI " + first[len("Open MPI v"):].split(",", 1)[0].strip()
    return first.split(",", 1)[0].strip()


def mpi_description() -> dict[str, Any]:
    """MPI library, standard version, mpi4py version, CUDA-awareness and the ranks of this job (1 outside mpiexec).

    Raises:
        ImportError: when there is no MPI library (its message says how to install one).
    """
    from mpiprop.distributed import mpi_cuda_aware, mpi_library_facts

    facts = mpi_library_facts()  # loads MPI first (a singleton job outside mpiexec; the CUDA query needs it)
    return {"mpi_library": summarize_library_version(facts["library_version"]), "mpi_standard": facts["standard"],
            "mpi4py": facts["mpi4py"], "cuda_aware_mpi": mpi_cuda_aware(), "ranks": facts["ranks"]}


def launcher_description() -> dict[str, Any]:
    """The launcher that `mpiprop run` would use (mpiexec, or srun in a Slurm allocation) and its flavour.

    None for both when none is installed.
    """
    try:
        launcher, flavour = choose_launcher()
    except FileNotFoundError:
        return {"mpiexec": None, "mpiexec_flavour": None}
    return {"mpiexec": launcher, "mpiexec_flavour": flavour}


def gpu_description() -> dict[str, Any]:
    """cupy version, NCCL version and the number of GPUs seen (None and 0 without cupy)."""
    from mpiprop.network import backend

    if backend.cupy is None:
        return {"cupy": None, "nccl": None, "gpus": 0}
    return {"cupy": backend.cupy.__version__, "nccl": _nccl_version(),
            "gpus": backend.cupy.cuda.runtime.getDeviceCount() if backend.cupy_available() else 0}


def _nccl_version() -> int | None:
    try:  # a submodule of the cupy that mpiprop.network.backend already imported
        return int(importlib.import_module("cupy.cuda.nccl").get_version())
    except Exception:
        return None


def host_description() -> dict[str, Any]:
    """Host name, cores usable by this process, Python, numpy and its BLAS, and the date."""
    import numpy

    return {"host": platform.node(), "cores": available_cores(), "python": platform.python_version(),
            "numpy": numpy.__version__, "blas": blas_description(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def blas_description() -> str:
    """The BLAS numpy was built with, e.g. "scipy-openblas 0.3.27" ("unknown" when numpy does not say)."""
    import numpy

    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except Exception:  # numpy < 1.25 has no mode="dicts"
        return "unknown"


def collect_info() -> dict[str, Any]:
    """Everything `mpiprop info` prints, as a dict (also stored with scaling results).

    Without an MPI library, "mpi_library" says so and how to install one, and the MPI fields are None.
    """
    try:
        mpi = mpi_description()
    except ImportError as error:
        mpi = {"mpi_library": f"none: {error}", "mpi_standard": None, "mpi4py": None, "cuda_aware_mpi": None,
               "ranks": None}
    return {**mpi, **launcher_description(), **gpu_description(), **host_description()}


def format_info(info: dict[str, Any]) -> str:
    """`collect_info()` as aligned "name: value" lines."""
    labels = {"mpi_library": "MPI library", "mpi_standard": "MPI standard", "mpi4py": "mpi4py",
              "cuda_aware_mpi": "CUDA-aware MPI", "ranks": "ranks", "mpiexec": "mpiexec",
              "mpiexec_flavour": "mpiexec flavour",
              "cupy": "cupy", "nccl": "NCCL", "gpus": "GPUs", "cores": "cores", "host": "host",
              "python": "Python", "numpy": "numpy", "blas": "BLAS", "date": "date"}
    width = max(len(label) for label in labels.values())
    return "\n".join(f"{labels.get(key, key):<{width}}  {_shown(value)}" for key, value in info.items())


def _shown(value: Any) -> str:
    if value is None:
        return "not available"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
