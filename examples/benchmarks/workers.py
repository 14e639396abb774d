"""Start a benchmark's worker under `mpiexec` (one BLAS thread per rank) and read back the record it prints.

A worker prints one line `RESULT <json>` on rank 0; `run_worker` returns the parsed JSON, even when
the job fails after printing it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from mpiprop.launch.job_processes import run_whole_job
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

    A job that fails or hangs after printing its RESULT line (torch's gloo workers can crash
    while shutting down: `terminate called without an active exception`) still gives its
    figures, with a note on stderr; past `timeout` seconds the whole job is stopped.

    Args:
        torch_init_file: also pass `--init-file` with a fresh path, for torch.distributed's file rendezvous.

    Raises:
        RuntimeError: with the command, its exit status and output, when it printed no RESULT line.
    """
    command = [*Launcher.detect(MPIEXEC).prefix(ranks), sys.executable, str(script), *arguments]
    with tempfile.TemporaryDirectory() as scratch:
        if torch_init_file:
            command += ["--init-file", os.path.join(scratch, "gloo-init")]
        env = dict(os.environ, **ONE_THREAD)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH")]))
        status, stdout, stderr = _run_job(command, timeout, env)
    record = reported_result(stdout)
    if record is None:
        raise RuntimeError(f"{' '.join(command)} failed ({status}) before reporting a result:\n{stdout}\n{stderr}")
    if status != 0:
        last_lines = "\n".join(stderr.strip().splitlines()[-3:])
        print(f"note: {' '.join(command)} ended with {status} after reporting its result, which is kept; "
              f"its last words:\n{last_lines}", file=sys.stderr, flush=True)
    return record


def reported_result(stdout: str) -> Any:
    """The record of the last RESULT line in `stdout`, or None when there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None


def _run_job(command: list[str], timeout: float, env: dict[str, str]) -> tuple[int | str, str, str]:
    """(exit status or why there is none, stdout, stderr) of the whole job, stopped past `timeout`."""
    try:
        done = run_whole_job(command, timeout, env=env)
    except subprocess.TimeoutExpired as expired:
        return f"stopped after {timeout} s", expired.stdout or "", expired.stderr or ""
    return done.returncode, done.stdout, done.stderr
