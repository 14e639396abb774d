#!/usr/bin/env bash
#PBS -N mpiprop-digits
#PBS -l select=2:ncpus=4:mpiprocs=4
#PBS -l walltime=00:20:00
#PBS -j oe
# Data-parallel training of the digits MLP on every slot of a PBS job. From the repository root:
#     qsub examples/launch/pbs_job.sh
# $PBS_NODEFILE lists a host once per MPI process PBS granted there (mpiprocs); mpirun starts one rank per line.
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
nodefile="${PBS_NODEFILE:?not inside a PBS job: submit this script with qsub}"
ranks=$(grep -c . "$nodefile")
exec mpirun --hostfile "$nodefile" -n "$ranks" python examples/train_digits.py "$@"
