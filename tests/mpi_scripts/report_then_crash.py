"""A benchmark worker whose rank 1 crashes while shutting down after rank 0 has printed its RESULT line.

With --crash-first, rank 1 crashes before rank 0 reports anything.
"""
import os
import sys
import time

RANK = int(os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)  # MPICH or Open MPI


def crash() -> None:
    print("terminate called without an active exception", file=sys.stderr, flush=True)
    os.abort()


def main() -> None:
    crash_first = "--crash-first" in sys.argv
    if RANK == 1:
        time.sleep(0 if crash_first else 0.5)
        crash()
    if crash_first:
        time.sleep(30)  # the crash of rank 1 ends the job first
    print('RESULT {"samples_per_s": 123.0}', flush=True)


if __name__ == "__main__":
    main()
