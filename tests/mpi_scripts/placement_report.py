"""Prints one JSON line per rank: its place on the node, and the BLAS threads threadpoolctl sees after `mpiprop.distributed.start()`.

`--set NAME=VALUE` sets an environment variable before mpiprop.distributed is imported (a launcher
variable that disagrees with MPI's placement, say); `{rank}` in VALUE becomes the rank, `{swapped}`
1 - rank. numpy, and so its BLAS, is loaded first, as a
user's script would.
"""
import argparse
import json
import os
import sys

import numpy  # noqa: F401  (the BLAS is loaded before mpiprop.distributed limits it)
import threadpoolctl
from mpi4py import MPI

parser = argparse.ArgumentParser()
parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
for assignment in parser.parse_args().set:
    name, value = assignment.split("=", 1)
    os.environ[name] = value.format(rank=MPI.COMM_WORLD.Get_rank(), swapped=1 - MPI.COMM_WORLD.Get_rank())

import mpiprop.distributed  # noqa: E402
from mpiprop.distributed.transport.world import world_node  # noqa: E402

mpiprop.distributed.start()

node = world_node()
blas = sorted({pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"})
sys.stdout.write(json.dumps({"rank": MPI.COMM_WORLD.Get_rank(), "local_rank": mpiprop.distributed.local_rank(),
                  "local_size": node.local_size, "node_cores": node.node_cores, "rank_cores": node.rank_cores, "blas_threads": blas,
                  "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}) + "\n")
