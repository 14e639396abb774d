"""Ranks that ignore SIGTERM and never import `distributed` (so no orphan guard): only a kill ends them."""
import signal
import time

from mpi4py import MPI

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"started {MPI.COMM_WORLD.Get_rank()}", flush=True)
time.sleep(600)
