"""Rank 1 raises before anything of mpiprop is imported, while rank 0 waits in a barrier.

Under plain `mpiexec` this hangs (MPICH's behaviour); under `mpiprop run` or
`python -m mpi4py`, an abort handler installed before the script runs ends the job.
"""
from mpi4py import MPI

if MPI.COMM_WORLD.Get_rank() == 1:
    raise RuntimeError("deliberate failure before importing mpiprop")
MPI.COMM_WORLD.Barrier()
print("finished without the failure", flush=True)
