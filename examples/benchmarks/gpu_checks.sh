#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU, cupy and PyTorch CUDA:
#   1. the test suite with the cupy cases enabled,
#   2. the digits example on the GPU, on one rank and on 2 ranks sharing the GPU (host staging),
#   3. an NCCL allreduce through Communicator (one rank: the most one GPU allows),
#   4. bench_gpu.py: a training step against PyTorch CUDA eager.
# Usage: examples/benchmarks/gpu_checks.sh [LOG_DIR]   (run from the repository root)
set -uo pipefail
log_dir=${1:-gpu_logs}
python=${PYTHON:-python3}
mkdir -p "$log_dir"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, keep its log, remember a failure
    local name=$1 limit=$2; shift 2
    echo "=== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$log_dir/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$log_dir/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$python -c "import cupy, mpi4py; from mpi4py import MPI; print('cupy', cupy.__version__, '| mpi4py', mpi4py.__version__, '|', MPI.Get_library_version().splitlines()[0])"
step bench_gpu 120 $python examples/benchmarks/bench_gpu.py
step digits_gpu_1rank 90 $python examples/train_digits.py --device cuda --quiet
step digits_gpu_2ranks 120 mpiexec -n 2 $python examples/train_digits.py --device cuda --quiet
step nccl_one_rank 60 $python -c "
import cupy, distributed
comm = mpiprop.distributed.Communicator()
assert comm.nccl_enabled, 'NCCL was not chosen for a single rank that owns its GPU'
a = cupy.arange(6, dtype=cupy.float32); comm.allreduce(a); comm.bcast(a)
assert float(abs(a - cupy.arange(6)).max()) == 0.0; print('NCCL allreduce and bcast through Communicator: ok')"
step test_suite 250 $python -m pytest -q -p no:cacheprovider -n 8 -rs
exit $status
