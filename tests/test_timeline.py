"""The timeline tracer: nothing recorded when off, Chrome trace events when on, rank files merged into one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from mpiprop.distributed.reliability.timeline import Tracer, merge_rank_files, rank_file
from test_launch_run import run_mpiprop

TIMEOUT_S = 120


def test_a_disabled_tracer_records_nothing():
    tracer = Tracer()
    with tracer.span("forward", micro_batch=1):
        pass
    tracer.end(tracer.begin("allreduce", track="bucket 0"))
    assert not tracer.enabled and tracer.events == []
    assert tracer.span("a") is tracer.span("b")  # one shared no-op object: nothing allocated per call


def test_spans_become_complete_events_on_their_tracks(tmp_path):
    tracer = Tracer(str(tmp_path / "t.json"))
    with tracer.span("forward", micro_batch=3):
        token = tracer.begin("allreduce", track="bucket 0", bytes=64)
        time.sleep(0.002)
    tracer.end(token, waited=True)
    forward, allreduce = sorted(tracer.events, key=lambda event: event["name"])[::-1]
    assert forward["name"] == "forward" and forward["ph"] == "X" and forward["args"] == {"micro_batch": 3}
    assert allreduce["args"] == {"bytes": 64, "waited": True}
    assert forward["tid"] == 0 and allreduce["tid"] == 1
    assert allreduce["dur"] >= 2000  # microseconds
    assert forward["ts"] <= allreduce["ts"] and allreduce["ts"] + allreduce["dur"] >= forward["ts"] + forward["dur"]
    assert abs(forward["ts"] / 1e6 - time.time()) < 60  # wall-clock microseconds


def test_rank_files_merge_once_every_rank_has_written(tmp_path):
    path = str(tmp_path / "trace.json")
    assert rank_file(path, 3) == str(tmp_path / "trace.rank3.json")
    tracers = [Tracer(path) for _ in range(2)]
    for rank, tracer in enumerate(tracers):
        with tracer.span("step", rank=rank):
            pass
    assert tracers[0].write(rank=0, size=2) is None  # rank 1 has not written yet
    assert not os.path.exists(path)
    assert tracers[1].write(rank=1, size=2) == path
    events = json.load(open(path))["traceEvents"]
    assert {event["pid"] for event in events if event["ph"] == "X"} == {0, 1}
    names = {event["pid"]: event["args"]["name"] for event in events if event["name"] == "process_name"}
    assert names == {0: "rank 0", 1: "rank 1"}
    for tracer in tracers:
        tracer.disable()


def test_merge_ignores_rank_files_left_by_an_earlier_run(tmp_path):
    path = str(tmp_path / "trace.json")
    old = Tracer(path)
    old.write(rank=1, size=1)
    stale = time.time() - 3600
    os.utime(rank_file(path, 1), (stale, stale))
    assert merge_rank_files(path, size=2, newer_than=time.time() - 60) is None
    old.disable()


@pytest.mark.mpi
def test_two_rank_data_parallel_run_traces_every_rank(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import numpy
        import mpiprop.network as nn
        from mpiprop.distributed.data_parallel.data_parallel import DataParallel
        from mpiprop.distributed.reliability.timeline import span

        nn.manual_seed(0)
        model = DataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), bucket_cap_mb=1e-4)
        x = numpy.ones((4, 4), dtype=numpy.float32)
        for step in range(2):
            with span("step", step=step):
                out = model(x)
                model.backward(out)
    """))
    trace = tmp_path / "trace.json"
    completed = run_mpiprop("run", "-n", "2", "--threads-per-rank", "1", "--trace", str(trace), str(script),
                            cwd=str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    events = json.loads(trace.read_text())["traceEvents"]
    complete = [event for event in events if event["ph"] == "X"]
    assert {event["pid"] for event in complete} == {0, 1}
    for rank in (0, 1):
        names = {event["name"] for event in complete if event["pid"] == rank}
        assert {"step", "forward", "backward", "allreduce"} <= names, names
    buckets = {event["args"]["bucket"] for event in complete if event["name"] == "allreduce"}
    assert len(buckets) >= 2  # one row per bucket, each bucket traced


def test_environment_variable_turns_tracing_on_and_writes_at_exit(tmp_path):
    trace = tmp_path / "single.json"
    code = "from mpiprop.distributed.reliability.timeline import span, tracer\nwith span('work'): pass\nprint(tracer.enabled)"
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PMI_", "OMPI_"))}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S,
                               env={**environment, "MPIPROP_TRACE": str(trace)})
    assert completed.stdout.strip() == "True", completed.stderr
    events = json.loads(trace.read_text())["traceEvents"]
    assert [event["name"] for event in events if event["ph"] == "X"] == ["work"]
