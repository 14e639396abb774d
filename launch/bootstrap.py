"""What each rank runs under `mpiprop run`: pick its GPU, start the job's guards, then run the user's script."""
from __future__ import annotations

import os
import runpy
import sys
from types import TracebackType
from typing import MutableMapping

from mpiprop.launch.launcher_variables import launcher_environment

USAGE = "usage: python -m mpiprop.launch.bootstrap script.py [args...]  |  python -m mpiprop.launch.bootstrap -m module [args...]"


def local_rank(environ: MutableMapping[str, str]) -> int | None:
    """This process's rank among the ranks on its node, as its launcher reports it; None outside a launcher.

    Read from the environment, before MPI starts (see
    `mpiprop.distributed.transport.launcher_environment.launcher_local_rank`).
    """
    told = launcher_environment().launcher_local_rank(environ)
    return None if told is None else told.value


def gpu_for_rank(rank_on_node: int, gpus_per_node: int, visible: str | None = None) -> str:
    """The CUDA device this rank should see: the `rank_on_node % gpus_per_node`-th of `visible` (or of 0, 1, ...)."""
    choices = [device.strip() for device in visible.split(",") if device.strip()] if visible else []
    index = rank_on_node % gpus_per_node
    return choices[index % len(choices)] if choices else str(index)


def bind_gpu(environ: MutableMapping[str, str]) -> str | None:
    """Set CUDA_VISIBLE_DEVICES to this rank's GPU when MPIPROP_GPUS_PER_NODE asks for binding.

    Must run before cupy is imported. Returns the device chosen, or None when no binding was asked for.

    Raises:
        ValueError: when MPIPROP_GPUS_PER_NODE is not a positive integer.
    """
    requested = environ.get("MPIPROP_GPUS_PER_NODE")
    if not requested:
        return None
    if not requested.strip().isdigit() or int(requested) < 1:
        raise ValueError(f"MPIPROP_GPUS_PER_NODE must be a positive integer, got {requested!r}")
    device = gpu_for_rank(local_rank(environ) or 0, int(requested), environ.get("CUDA_VISIBLE_DEVICES"))
    environ["CUDA_VISIBLE_DEVICES"] = device
    return device


def run_program(program: list[str]) -> None:
    """Run `program` (["script.py", args...] or ["-m", "module", args...]) as `__main__`, as `python` would."""
    if program[0] == "-m":
        sys.argv = [program[1], *program[2:]]
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
        return
    script = program[0]
    sys.argv = list(program)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


def user_frames(traceback: TracebackType | None) -> TracebackType | None:
    """`traceback` without its leading frames from this module and runpy (the user's code starts after them)."""
    current = traceback
    while current is not None and (current.tb_frame.f_code.co_filename in (__file__, runpy.__file__)
                                   or current.tb_frame.f_code.co_filename.startswith("<frozen runpy")):
        current = current.tb_next
    return current or traceback


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m mpiprop.launch.bootstrap script.py args...`."""
    program = list(sys.argv[1:] if argv is None else argv)
    if not program or program == ["-m"]:
        raise SystemExit(USAGE)
    bind_gpu(os.environ)
    from mpiprop.distributed import start

    start()  # MPI and the job's guards on every rank, before the script runs; after the GPU is chosen
    try:
        run_program(program)
    except SystemExit:
        raise
    except BaseException as error:  # report it as the user's, not the bootstrap's, then end the job
        sys.excepthook(type(error), error, user_frames(error.__traceback__))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
