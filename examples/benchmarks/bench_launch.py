"""Seconds per epoch of the digits example on 2 ranks: plain `mpiexec` with no thread variable vs `mpiprop run`.

    python examples/benchmarks/bench_launch.py                  # 3 interleaved rounds of 6 epochs
    python examples/benchmarks/bench_launch.py --rounds 5 --epochs 10

Both start `examples/train_digits.py` with every BLAS thread variable removed from the environment,
so each rank's threads come from its first DataParallel (the node's cores divided by its
ranks) whichever way it was started. A third contestant, plain mpiexec with OMP_NUM_THREADS=1,
is the reference. Each run's seconds per epoch is the median over its epochs after the first
(which includes start-up); the table shows the median over rounds, and the target is mpiprop run
within 10% of plain mpiexec.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from mpiprop.launch.job_processes import run_whole_job
from mpiprop.launch.mpiexec import MPIEXEC
from mpiprop.launch.runner import Launcher

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
TRAIN_DIGITS = str(REPOSITORY_ROOT / "examples" / "train_digits.py")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TARGET_RATIO = 1.10
RANKS = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run, at least 2 (default 6)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per run (default 600)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 2:
        parser.error(f"--rounds must be at least 1 and --epochs at least 2, got {args.rounds} and {args.epochs}")
    return args


def contestants(epochs: int, metrics: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (command, extra environment) of each way of starting the example."""
    example = [TRAIN_DIGITS, "--epochs", str(epochs), "--patience", str(epochs), "--quiet", "--metrics-out", metrics]
    plain = [*Launcher.detect(MPIEXEC).prefix(RANKS), sys.executable, *example]
    mpiprop_run = [sys.executable, "-m", "mpiprop.launch", "run", "-n", str(RANKS), "--launcher", MPIEXEC, *example]
    return {"mpiexec, no thread variable": (plain, {}), "mpiprop run": (mpiprop_run, {}),
            "mpiexec, OMP_NUM_THREADS=1": (plain, {"OMP_NUM_THREADS": "1"})}


def seconds_per_epoch(command: list[str], extra: dict[str, str], metrics: str, timeout: float) -> float:
    """Run `command` and return the median of its epochs' times after the first, from the metrics file.

    Raises:
        RuntimeError: when the run fails.
    """
    environment = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    Path(metrics).unlink(missing_ok=True)
    done = run_whole_job(command, timeout, env={**environment, **extra}, cwd=REPOSITORY_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    times = [json.loads(line)["time"] for line in Path(metrics).read_text().splitlines() if line.strip()]
    return statistics.median(times[1:])


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the rounds and print the table; returns the median seconds per epoch of each contestant."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        metrics = os.path.join(scratch, "metrics.jsonl")
        runs = contestants(args.epochs, metrics)
        names = list(runs)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_number in range(args.rounds):
            for name in names[round_number % len(names):] + names[:round_number % len(names)]:
                seconds[name].append(seconds_per_epoch(*runs[name], metrics, args.timeout))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name in names:
        rounds = ", ".join(f"{value:.4f}" for value in seconds[name])
        print(f"{name:<28} {medians[name]:.4f} s/epoch  (rounds: {rounds})")
    ratio = medians["mpiprop run"] / medians["mpiexec, no thread variable"]
    met = "met" if 1 / TARGET_RATIO <= ratio <= TARGET_RATIO else "NOT met"
    print(f"mpiprop run / plain mpiexec: {ratio:.3f} (target within {TARGET_RATIO - 1:.0%}: {met})")
    return medians


if __name__ == "__main__":
    main()
