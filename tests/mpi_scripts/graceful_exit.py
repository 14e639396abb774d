"""A job that, like a preempted training, takes its time to end after a signal, then exits with status 75.

    mpiprop run -n N graceful_exit.py [SECONDS]

On SIGTERM, SIGINT, SIGHUP, SIGUSR1 or SIGUSR2 each rank prints "rank R: got SIGNAL" on stderr,
sleeps SECONDS (default 4: the checkpoint it would write), prints "rank R: saved" and exits with
status 75, as `mpiprop.network.training.preemption` does. Each rank prints "READY" on stdout
once every rank has started. Without a signal it waits for one (at most 10 minutes).
"""
import signal
import sys
import time

from mpi4py import MPI

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
PREEMPTED_EXIT_CODE = 75


def main() -> None:
    rank = MPI.COMM_WORLD.Get_rank()
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0

    def finish(signum, frame):
        print(f"rank {rank}: got {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        time.sleep(seconds)
        print(f"rank {rank}: saved", file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT_CODE)

    for each in HANDLED:
        signal.signal(each, finish)
    MPI.COMM_WORLD.Barrier()
    print("READY", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
