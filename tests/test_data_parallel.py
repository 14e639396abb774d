"""DataParallel: buckets and the single-process contract in-process, N-rank equivalence under real mpiexec."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.distributed.data_parallel.buckets import GradientBucket, assign_buckets
from mpiprop.distributed.reliability.consistency import first_difference, model_signature
from mpi_launch import MPI_SCRIPTS, REPOSITORY_ROOT, mpi_env, mpiexec_command, run_bounded, run_mpi
from packages import require

TRAIN_DIGITS = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"


def make_mlp(seed: int = 0) -> nn.Sequential:
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def batch(seed: int = 1, rows: int = 7):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((rows, 6)).astype(numpy.float32), rng.integers(0, 3, rows)


def gradients(model) -> list[numpy.ndarray]:
    return [p.grad.copy() for p in model.parameters()]


# --- buckets --------------------------------------------------------------------------------------
def test_assign_buckets_closes_a_bucket_once_it_reaches_the_cap():
    sizes = [3, 2, 10, 1, 1]  # float32: 12, 8, 40, 4, 4 bytes
    params = [nn.Parameter(numpy.zeros(n, dtype=numpy.float32)) for n in sizes]
    groups = assign_buckets(params, cap_bytes=16)
    assert [[p.size for p in group] for group in groups] == [[3, 2], [10], [1, 1]]
    assert [len(group) for group in assign_buckets(params, cap_bytes=10**6)] == [5]


def test_assign_buckets_separates_dtypes():
    params = [nn.Parameter(numpy.zeros(2, dtype=numpy.float32)), nn.Parameter(numpy.zeros(2, dtype=numpy.float64))]
    assert [len(group) for group in assign_buckets(params, cap_bytes=10**6)] == [1, 1]
    with pytest.raises(ValueError, match="at least 1 byte"):
        assign_buckets(params, cap_bytes=0)


def test_bucket_gradients_are_views_that_keep_their_values():
    model = make_mlp()
    for p in model.parameters():
        p.grad[...] = numpy.random.default_rng(p.size).standard_normal(p.shape)
    before = gradients(model)
    bucket = GradientBucket(model.parameters())
    for p, old in zip(model.parameters(), before):
        assert numpy.shares_memory(p.grad, bucket.buffer)
        numpy.testing.assert_array_equal(p.grad, old)
    model[0].weight.grad += 1.0
    assert bucket.buffer[:30].sum() == pytest.approx(before[0].sum() + 30.0, rel=1e-5)
    assert bucket.rebound_parameter() is None
    model[2].bias.to(dtype=numpy.float64)
    assert bucket.rebound_parameter() is model[2].bias


# --- one process: DataParallel must be the plain model ---------------------------------------------
@pytest.mark.parametrize("bucket_cap_mb", [4.0, 1e-5])
def test_single_rank_gradients_equal_the_plain_model(bucket_cap_mb):
    x, y = batch()
    plain, wrapped = make_mlp(), make_mlp()
    dp = DataParallel(wrapped, bucket_cap_mb=bucket_cap_mb)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(plain(x), y)
    plain.backward(loss_fn.backward(), input_grad=False)
    loss_fn(dp(x), y)
    assert dp.backward(loss_fn.backward()) is None
    for expected, got in zip(gradients(plain), gradients(dp)):
        numpy.testing.assert_array_equal(got, expected)
    assert dp.last_sync_stats.buckets == len(dp.buckets) == (1 if bucket_cap_mb == 4.0 else 6)


def test_single_rank_on_each_array_module(xp, device):
    x, y = batch()
    plain, wrapped = make_mlp().to(device=device), make_mlp().to(device=device)
    dp = DataParallel(wrapped, bucket_cap_mb=1e-5, compression="float16")
    loss_fn = nn.CrossEntropyLoss()
    for model in (plain, dp):
        loss_fn(model(xp.asarray(x)), xp.asarray(y))
        model.backward(loss_fn.backward())
    for expected, got in zip(gradients(plain), gradients(dp)):
        assert nn.get_array_module(got) is xp
        numpy.testing.assert_allclose(nn.to_numpy(got), nn.to_numpy(expected), rtol=2e-3, atol=1e-4)


def test_input_gradient_and_explicit_cache():
    x, _ = batch()
    plain, dp = make_mlp(), DataParallel(make_mlp())
    dout = numpy.ones((7, 3), dtype=numpy.float32)
    expected = plain.backward(dout, plain.forward(x)[1])
    out, cache = dp.forward(x)
    numpy.testing.assert_allclose(dp.backward(dout, cache, input_grad=True), expected, rtol=1e-6)
    with pytest.raises(RuntimeError, match="no forward is remembered"):
        dp.backward(dout)


def test_no_sync_accumulates_like_two_backwards():
    (x1, y1), (x2, y2) = batch(1), batch(2)
    plain, dp = make_mlp(), DataParallel(make_mlp())
    loss_fn = nn.CrossEntropyLoss()
    for x, y in ((x1, y1), (x2, y2)):
        loss_fn(plain(x), y)
        plain.backward(loss_fn.backward())
    loss_fn(dp(x1), y1)
    with dp.no_sync():
        dp.backward(loss_fn.backward())
    loss_fn(dp(x2), y2)
    dp.backward(loss_fn.backward())
    for expected, got in zip(gradients(plain), gradients(dp)):
        numpy.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    dp.zero_grad()
    assert all((p.grad == 0).all() for p in dp.parameters())


def test_module_that_is_not_a_sequential():
    class Residual(nn.Layer):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x):
            y, cache = self.inner.forward(x)
            return x + y, cache

        def backward(self, dy, cache=None):
            return dy + self.inner.backward(dy, cache)

    nn.manual_seed(0)
    plain = Residual()
    nn.manual_seed(0)
    dp = DataParallel(Residual())
    x = numpy.ones((2, 3), dtype=numpy.float32)
    plain.backward(numpy.ones((2, 3), dtype=numpy.float32), plain.forward(x)[1])
    dp(x)
    dp.backward(numpy.ones((2, 3), dtype=numpy.float32))
    for expected, got in zip(gradients(plain), gradients(dp)):
        numpy.testing.assert_array_equal(got, expected)


def test_model_like_interface_and_state():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    dp = DataParallel(model)
    assert dp.module is model and dp.parameters() == model.parameters()
    assert dp.allreduce_kind == "mpi" and "allreduce='mpi'" in repr(dp)  # one rank has nobody to share memory with
    assert [name for name, _ in dp.named_parameters()] == [name for name, _ in model.named_parameters()]
    assert dp.eval() is dp and not model.training and not dp.training
    dp.train()
    state = dp.state_dict()
    state["1.running_mean"] = numpy.full(4, 3.0, dtype=numpy.float32)
    dp.load_state_dict(state)
    numpy.testing.assert_array_equal(model[1].running_mean, 3.0)
    with pytest.raises(RuntimeError, match="before DataParallel"):
        dp.to(dtype=numpy.float64)


def test_rebound_gradient_is_reported():
    model = make_mlp()
    dp = DataParallel(model)
    model.to(dtype=numpy.float64)
    dp(numpy.ones((2, 6)))
    with pytest.raises(RuntimeError, match="move or cast the model before wrapping"):
        dp.backward(numpy.ones((2, 3)))


def test_invalid_arguments():
    with pytest.raises(TypeError, match="network Layer"):
        DataParallel(lambda x: x)
    with pytest.raises(ValueError, match="bucket_cap_mb must be > 0"):
        DataParallel(make_mlp(), bucket_cap_mb=0)
    with pytest.raises(ValueError, match="unknown gradient compression 'int8'"):
        DataParallel(make_mlp(), compression="int8")


def test_first_difference_names_the_parameter():
    small, wide = make_mlp(), nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 3))
    message = first_difference(model_signature(small), model_signature(wide))
    assert "'2.weight' of shape (5, 4)" in message and "shape (5, 9)" in message
    assert first_difference(model_signature(small), model_signature(make_mlp(seed=5))) is None
    fewer = model_signature(small[:3])
    assert first_difference(model_signature(small), fewer) == (
        "rank 0 has 6 parameters and 0 buffers, that rank 4 parameters and 0 buffers")


@pytest.mark.mpi
# --- real mpiexec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [2, 4])
def test_data_parallel_equals_single_process_training(ranks):
    result = run_mpi("dp_equivalence.py", ranks)
    lines = re.findall(r"ranks=(\d+) micro_batches=(\d+) buckets=(\d+) allreduce=(\w+) compression=(\w+) "
                       r"max_abs_diff=([0-9.eE+-]+)", result.stdout)
    assert len(lines) == 5, result.stdout + result.stderr
    for _, micro_batches, buckets, allreduce, compression, difference in lines:
        assert float(difference) < (1e-3 if compression == "float16" else 1e-5)
    configurations = {(m, b, kind) for _, m, b, kind, c, _ in lines if c == "None"}
    assert configurations == {("1", "1", "shared_memory"), ("1", "3", "shared_memory"), ("3", "3", "shared_memory"),
                              ("3", "3", "mpi")}
    assert [kind for *_, kind, c, _ in lines if c == "float16"] == ["mpi"]
    for rank in range(ranks):
        assert f"rank {rank} ok" in result.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_shared_memory_allreduce_equals_mpi_allreduce(ranks):
    result = run_mpi("shared_allreduce.py", ranks)
    for rank in range(ranks):
        assert f"rank {rank} ok" in result.stdout, result.stdout + result.stderr


def can_make_mount_namespaces() -> bool:
    """Whether `unshare -m` works here (Linux, and the right to mount: root)."""
    return (sys.platform.startswith("linux") and shutil.which("unshare") is not None
            and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0)


@pytest.mark.mpi
@pytest.mark.skipif(not can_make_mount_namespaces(), reason="needs `unshare -m` (root on Linux) to mount a small /dev/shm")
def test_a_dev_shm_too_small_for_the_buckets_means_a_warning_and_mpi_allreduce():
    """A 64 MB /dev/shm (Docker's default) in a mount namespace of this test's own."""
    mount_then_run = 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" "$@"'
    command = ["unshare", "-m", "sh", "-c", mount_then_run,
               *mpiexec_command(2, sys.executable, str(MPI_SCRIPTS / "dp_small_shm.py"))]
    result = run_bounded(command, 120, env=mpi_env(), cwd=REPOSITORY_ROOT)
    for rank in (0, 1):
        assert f"rank {rank} ok" in result.stdout, result.stdout + result.stderr


@pytest.mark.mpi
def test_different_models_raise_a_clear_error_on_every_rank():
    result = run_mpi("dp_mismatch.py", 2)
    for rank in (0, 1):
        assert (f"rank {rank} shape: ValueError: DataParallel: rank 1 built a different model than rank 0: "
                "entry 2 is parameter '2.weight' of shape (6, 4)") in result.stdout, result.stdout
        assert (f"rank {rank} count: ValueError: DataParallel: rank 1 built a different model than rank 0: "
                "rank 0 has 4 parameters and 0 buffers, that rank 6 parameters") in result.stdout, result.stdout


@pytest.mark.mpi
def test_digits_example_reaches_the_same_accuracy_on_two_ranks_as_on_one():
    """Same global batch of 32 and the same sample order (the loader shards each global batch),
    so the runs differ only by dropout masks and float rounding. TOLERANCE: 0.02, i.e. 7 of the
    360 test images, the spread of the single-process accuracy over dropout seeds (see README)."""
    require("sklearn")
    arguments = ["--epochs", "6", "--quiet", "--seed", "0"]
    accuracies = []
    for ranks in (1, 2):
        output = run_mpi(TRAIN_DIGITS, ranks, *arguments).stdout
        lines = re.findall(r"test_accuracy=([0-9.]+)", output)
        assert len(lines) == 1, f"only rank 0 prints, once: {output}"
        accuracies.append(float(lines[0]))
    assert accuracies[0] > 0.9, accuracies
    assert abs(accuracies[0] - accuracies[1]) <= 0.02, accuracies
