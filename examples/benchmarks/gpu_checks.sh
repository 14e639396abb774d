#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU, cupy and PyTorch CUDA (mpiprop installed):
#   1. the tests with a cupy variant or about GPUs, with cupy enabled;
#   2. the digits example on the GPU: one rank, 2 data-parallel ranks sharing the GPU (host staging),
#      and 2 tensor-parallel ranks;
#   3. the memory report on the GPU (cupy's pool), 2 tensor-parallel ranks;
#   4. an NCCL allreduce through Communicator (one rank: the most one GPU allows);
#   5. bench_gpu.py: a training step against PyTorch CUDA eager.
# Usage: examples/benchmarks/gpu_checks.sh [LOG_DIR]   (run from the repository root)
log_dir=$(realpath -m "${1:-gpu_logs}")
tail_lines=25
source "$(dirname "$0")/check_steps.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$python -c "import cupy, mpi4py; from mpi4py import MPI; print('cupy', cupy.__version__, '| mpi4py', mpi4py.__version__, '|', MPI.Get_library_version().splitlines()[0])"
step tests_gpu 150 bash -c "cd tests && $python -m pytest -q -p no:cacheprovider -rs -k 'cupy or gpu or cuda or nccl'"
step digits_gpu_1rank 90 $python examples/train_digits.py --device cuda --epochs 5 --quiet
step digits_gpu_2ranks 90 mpiexec -n 2 $python examples/train_digits.py --device cuda --epochs 5 --quiet
step digits_gpu_tensor_parallel 90 mpiexec -n 2 $python examples/train_digits.py --device cuda --epochs 5 \
    --tensor-parallel 2 --quiet
step memory_report_gpu 60 mpiexec -n 2 $python examples/memory_report.py --layout tensor --device cuda
step nccl_one_rank 60 $python -c "
import cupy
from mpiprop import distributed
comm = distributed.Communicator()
assert comm.nccl_enabled, 'NCCL was not chosen for a single rank that owns its GPU'
a = cupy.arange(6, dtype=cupy.float32); comm.allreduce(a); comm.bcast(a)
assert float(abs(a - cupy.arange(6)).max()) == 0.0; print('NCCL allreduce and bcast through Communicator: ok')"
step bench_gpu 120 $python examples/benchmarks/bench_gpu.py --steps 10 --rounds 5
exit $status
