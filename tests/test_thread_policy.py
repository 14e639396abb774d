"""BLAS threads in one process: one for small products after the first step, the user's count when set,
several for large products only where they measure faster, nothing at import."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from mpiprop.network.compute import threads
from mpiprop.network.compute.threads import LARGE_PRODUCT, TRIALS, ThreadPolicy, available_cores

THREAD_SETTINGS = ("MPIPROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ONE_STEP = """
import json, numpy, threadpoolctl
import mpiprop.network as nn
imported = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
nn.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
x, y = numpy.random.rand(64, 64).astype(numpy.float32), numpy.random.randint(0, 10, size=64)
loss = loss_fn(model(x), y)
model.backward(loss_fn.backward())
optimizer.step()
pools = {pool["filepath"]: pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"}
print(json.dumps({"imported": imported, "after_step": pools}))
"""


def one_step(**settings: str) -> dict:
    """Thread counts of the BLAS pools at import and after one training step, in a fresh process."""
    env = {name: value for name, value in os.environ.items() if name not in THREAD_SETTINGS}
    completed = subprocess.run([sys.executable, "-c", ONE_STEP], capture_output=True, text=True, timeout=300,
                               env={**env, **settings})
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])


@pytest.fixture
def several_cores():
    if available_cores() < 2:
        pytest.skip("one core: one BLAS thread is every BLAS's default")
    return available_cores()


def test_after_the_first_step_every_blas_pool_has_one_thread_and_importing_changed_nothing(several_cores):
    report = one_step()
    assert report["imported"] and set(report["imported"]) == {several_cores}  # importing has no side effects
    assert len(report["after_step"]) >= 2, report  # numpy's OpenBLAS and scipy's (or MKL)
    assert set(report["after_step"].values()) == {1}, report


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"])
def test_the_users_thread_count_stands(several_cores, variable):
    report = one_step(**{variable: "2"})
    assert set(report["after_step"].values()) == {2}, report


def test_mpiprop_threads_sets_every_pool(several_cores):
    report = one_step(MPIPROP_THREADS="2")
    assert set(report["imported"]) == {several_cores} and set(report["after_step"].values()) == {2}, report


def test_a_bad_mpiprop_threads_is_refused_naming_it():
    with pytest.raises(ValueError, match="MPIPROP_THREADS must be a positive integer .* got 'many'"):
        ThreadPolicy({"MPIPROP_THREADS": "many"}, cores=4)


class FakePool:
    def __init__(self):
        self.num_threads = 4

    def set_num_threads(self, count: int) -> None:
        self.num_threads = count


def policy_with_pools(cores: int = 4) -> tuple[ThreadPolicy, list[FakePool]]:
    policy, pools = ThreadPolicy({}, cores=cores), [FakePool(), FakePool()]
    policy._pools = pools
    policy.set_threads(1)
    return policy, pools


@pytest.mark.parametrize("faster", [1, 4])
def test_large_products_are_timed_with_one_thread_and_every_core_and_the_faster_is_kept(faster):
    policy, pools = policy_with_pools(cores=4)
    seen = []

    def product():
        seen.append(pools[0].num_threads)
        time.sleep(0.002 if pools[0].num_threads == faster else 0.02)  # ten times apart: clear under load

    for _ in range(2 * TRIALS + 3):
        policy.run(LARGE_PRODUCT, product)
    assert sorted(seen[:2 * TRIALS]) == [1] * TRIALS + [4] * TRIALS
    assert policy.large_threads == faster and seen[2 * TRIALS:] == [faster] * 3
    assert [pool.num_threads for pool in pools] == [1, 1]  # back to one thread between products


def test_small_products_never_change_the_thread_count():
    policy, pools = policy_with_pools(cores=4)
    seen = []
    for _ in range(10):
        policy.run(LARGE_PRODUCT - 1, lambda: seen.append(pools[0].num_threads))
    assert seen == [1] * 10 and policy.timings == {1: [], 4: []}


def test_limiting_threads_for_a_rank_stops_the_policy(monkeypatch):
    policy, pools = policy_with_pools(cores=4)
    monkeypatch.setattr(threads, "_policy", [policy])
    monkeypatch.setattr("threadpoolctl.threadpool_limits", lambda limits: None)  # this test process keeps its own
    environ: dict[str, str] = {}
    threads.limit_threads(2, environ)
    assert environ == {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    seen = []
    policy.run(LARGE_PRODUCT, lambda: seen.append(pools[0].num_threads))
    assert not policy.adaptive and policy.timings == {1: [], 4: []}


def test_the_choice_is_made_again_as_the_machines_load_changes(monkeypatch):
    monkeypatch.setattr(threads, "CHOOSE_AGAIN_AFTER", 2 * TRIALS + 4)
    policy, pools = policy_with_pools(cores=4)
    faster = [4]

    def product():
        time.sleep(0.002 if pools[0].num_threads == faster[0] else 0.02)

    for _ in range(2 * TRIALS):
        policy.run(LARGE_PRODUCT, product)
    assert policy.large_threads == 4
    faster[0] = 1  # other work now holds the cores
    for _ in range(5 + 2 * TRIALS):
        policy.run(LARGE_PRODUCT, product)
    assert policy.large_threads == 1
