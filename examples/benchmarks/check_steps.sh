# Sourced by gpu_checks.sh and node_checks.sh: `step NAME TIMEOUT_S COMMAND...` runs the command with a
# timeout, keeps its output in $log_dir/NAME.log, prints the log's last $tail_lines lines and the exit
# status, and sets status=1 when it failed.
set -uo pipefail
python=${PYTHON:-python3}
mkdir -p "$log_dir"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
status=0
step() {
    local name=$1 limit=$2; shift 2
    echo "=== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$log_dir/$name.log" 2>&1
    local rc=$?
    tail -n "${tail_lines:-25}" "$log_dir/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ $rc -eq 0 ] || status=1
}
