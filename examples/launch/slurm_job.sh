#!/usr/bin/env bash
#SBATCH --job-name=mpiprop-digits
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --time=00:20:00
#SBATCH --output=mpiprop-digits-%j.out
# Data-parallel training of the digits MLP on every task of a Slurm allocation. From the repository root:
#     sbatch examples/launch/slurm_job.sh [train_digits.py arguments]
# srun starts the ranks; where a cluster has no srun, mpirun starts them on the allocation's hosts.
# Each rank sets its BLAS threads (its node's cores divided by the ranks there) when it imports mpiprop.distributed.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
ranks="${SLURM_NTASKS:?not inside a Slurm allocation: submit this script with sbatch}"
if command -v srun > /dev/null; then
  exec srun --ntasks="$ranks" python examples/train_digits.py "$@"
fi
exec mpirun -n "$ranks" python examples/train_digits.py "$@"
