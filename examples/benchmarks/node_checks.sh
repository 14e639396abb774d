#!/usr/bin/env bash
# The CPU scaling checks that need a node of 16 cores or more (one BLAS thread per rank):
#   1. bench_data_parallel.py at 8 ranks: DataParallel against 8 independent ranks and torch DDP;
#   2. mpiprop scale: predict 4 and 8 ranks from 1 and 2 (with runs alone at 4 and 8), then measure 4 and 8;
#   3. bench_pipeline.py: 2 stages, every schedule, against torch's pipelining.
# Usage: examples/benchmarks/node_checks.sh [LOG_DIR]   (run from the repository root, mpiprop installed)
log_dir=${1:-node_logs}
tail_lines=30
source "$(dirname "$0")/check_steps.sh"
echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg); /dev/shm: $(df -h /dev/shm | tail -1)"
workload=(-m mpiprop.launch.mlp_benchmark --steps 40 --warmup 5)
step data_parallel_8 150 $python examples/benchmarks/bench_data_parallel.py --ranks 8 --rounds 3 \
    --json "$log_dir/data_parallel_8.json"
step scale_predict 120 $python -m mpiprop.launch scale --ranks 1,2 --mode weak --predict 4,8 --repeat 5 \
    --out "$log_dir/scale_predict" -- "${workload[@]}"
step scale_measured 60 $python -m mpiprop.launch scale --ranks 4,8 --mode weak --repeat 5 \
    --out "$log_dir/scale_measured" -- "${workload[@]}"
step pipeline 120 $python examples/benchmarks/bench_pipeline.py --rounds 3 --json "$log_dir/pipeline.json"
exit $status
