"""Start a benchmark's worker under `mpiexec` (one BLAS thread per rank) and read back the record it prints.

A worker prints one line `RESULT <json>` on rank 0; `run_worker` returns the parsed JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from mpiprop.launch.mpiexec import MPIEXEC
from mpiprop.launch.runner import Launcher

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "RESULT "
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


def print_result(record: Any) -> None:
    """What a worker's rank 0 prints for `run_worker` to find."""
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def run_worker(script: str | Path, ranks: int, arguments: Sequence[str], *, timeout: float,
               torch_init_file: bool = False) -> Any:
    """Run `python script arguments...` under `mpiexec -n ranks` and return its RESULT record.

    Args:
        torch_init_file: also pass `--init-file` with a fresh path, for torch.distributed's file rendezvous.

    Raises:
        RuntimeError: with the command and its output, when it fails or prints no RESULT line.
    """
    command = [*Launcher.detect(MPIEXEC).prefix(ranks), sys.executable, str(script), *arguments]
    with tempfile.TemporaryDirectory() as scratch:
        if torch_init_file:
            command += ["--init-file", os.path.join(scratch, "gloo-init")]
        env = dict(os.environ, **ONE_THREAD)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH")]))
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])
