#!/usr/bin/env bash
# Data-parallel training of the digits MLP with plain mpirun, on the hosts of a hostfile or on one node's GPUs:
#     examples/launch/mpirun_job.sh HOSTFILE [train_digits.py arguments]    # one rank per line of HOSTFILE
#     GPUS=4 examples/launch/mpirun_job.sh [train_digits.py arguments]      # this node, one rank per GPU
# HOSTFILE names a host per line, once for each rank it should run (MPICH and Open MPI both read that);
# the same Python environment must exist at the same path on every host. With GPUS, each rank takes
# GPU (its rank on the node) % GPUS (train_digits.py calls mpiprop.distributed.bind_gpu()).
set -euo pipefail
train_digits="$(dirname "$0")/../train_digits.py"
if [ -n "${GPUS:-}" ]; then
  exec mpirun -n "$GPUS" python "$train_digits" --device cuda "$@"
fi
hostfile="${1:?usage: $0 HOSTFILE [train_digits.py arguments], or GPUS=N $0 [train_digits.py arguments]}"
shift
ranks=$(grep -c -v -e '^[[:space:]]*$' -e '^[[:space:]]*#' "$hostfile")
exec mpirun --hostfile "$hostfile" -n "$ranks" python "$train_digits" "$@"
