"""mpiprop scale: rank lists, efficiency arithmetic, the throughput line, and a real sweep on 1 and 2 ranks."""
from __future__ import annotations

import csv
import json

import pytest

from mpiprop.launch import cli
from mpiprop.launch.mpiexec import MPIEXEC
from mpiprop.launch.runner import Launcher
from mpiprop import distributed
from mpiprop.launch import mlp_benchmark
from mpiprop.launch.mlp_benchmark import local_batch_size
from mpiprop.launch.scale import (ScaleConfig, ScalePoint, format_table, measure_points, parse_rank_list,
                                  scaling_rows, write_csv)
from mpiprop.launch.throughput import format_throughput_line, parse_throughput_line
from test_launch_run import run_mpiprop

SWEEP_TIMEOUT_S = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_BENCHMARK = ["-m", "mpiprop.launch.mlp_benchmark", "--batch", "16", "--features", "8", "--hidden", "16", "--layers", "1",
                  "--steps", "3", "--warmup", "1"]


def point(ranks: int, *throughputs: float) -> ScalePoint:
    return ScalePoint(ranks, [{"samples_per_s": value, "step_s": 64 / value} for value in throughputs])


def test_rank_list_is_sorted_and_validated():
    assert parse_rank_list("4,1, 2") == [1, 2, 4]
    for bad in ("", "1,,2", "1,two", "0,1", "-1", "1.5"):
        with pytest.raises(ValueError, match="cannot read rank list"):
            parse_rank_list(bad)


def test_rows_hold_median_speedup_and_efficiency():
    rows = scaling_rows([point(1, 100.0, 120.0, 110.0), point(2, 200.0), point(4, 300.0)])
    assert [row["ranks"] for row in rows] == [1, 2, 4]
    assert rows[0]["samples_per_s"] == 110.0
    assert (rows[0]["samples_per_s_min"], rows[0]["samples_per_s_max"]) == (100.0, 120.0)
    assert rows[1]["speedup"] == pytest.approx(200 / 110) and rows[1]["efficiency"] == pytest.approx(200 / 220)
    assert rows[2]["efficiency"] == pytest.approx(300 / 440)
    assert rows[2]["step_s"] == pytest.approx(64 / 300)


def test_efficiency_is_relative_to_the_fewest_measured_ranks():
    rows = scaling_rows([point(2, 100.0), point(8, 300.0)])
    assert rows[1]["speedup"] == pytest.approx(3.0) and rows[1]["efficiency"] == pytest.approx(0.75)


def test_table_and_csv(tmp_path):
    rows = scaling_rows([point(1, 100.0), point(2, 150.0)])
    table = format_table(rows).splitlines()
    assert table[0].split() == ["ranks", "samples/s", "speedup", "efficiency"]
    assert table[2].split() == ["2", "150.0", "1.50", "0.75"]
    write_csv(rows, tmp_path / "scaling.csv")
    with open(tmp_path / "scaling.csv") as handle:
        written = list(csv.DictReader(handle))
    assert float(written[1]["efficiency"]) == pytest.approx(0.75) and written[1]["predicted_samples_per_s"] == ""


def test_throughput_line_round_trip_and_errors():
    line = format_throughput_line(1234.5, step_s=0.01, global_batch=64)
    assert parse_throughput_line(f"noise\n{line}\nmore noise") == {"samples_per_s": 1234.5, "step_s": 0.01,
                                                                    "global_batch": 64.0}
    with pytest.raises(ValueError, match="printed no"):
        parse_throughput_line("loss 0.3\n")
    with pytest.raises(ValueError, match="no samples_per_s"):
        parse_throughput_line("MPIPROP_THROUGHPUT step_s=0.1")
    with pytest.raises(ValueError, match="not key=<number>"):
        parse_throughput_line("MPIPROP_THROUGHPUT samples_per_s=fast")


def test_benchmark_batch_per_rank():
    assert local_batch_size("strong", 64, 4) == 16
    assert local_batch_size("weak", 64, 4) == 64
    with pytest.raises(ValueError, match="does not divide"):
        local_batch_size("strong", 10, 4)


class RecordingLauncher:
    """Answers each run with a throughput line, recording (ranks, alone) in order; honours the variant or not."""

    def __init__(self, has_variant: bool):
        self.has_variant, self.jobs = has_variant, []

    def run_captured(self, options, timeout=None) -> str:
        alone = ("MPIPROP_SCALE_NO_COMMUNICATION", "1") in options.environment
        self.jobs.append((options.ranks, alone))
        extra = {"communication": 0} if alone and self.has_variant else {}
        return format_throughput_line(100.0 * options.ranks, **extra)


def test_each_run_alone_follows_the_data_parallel_run_at_its_count():
    launcher = RecordingLauncher(has_variant=True)
    points, alone = measure_points(ScaleConfig(ranks=(1, 2), repeat=2), launcher, log=lambda line: None,
                                   alone_at=[1, 2, 4])
    one_round = [(1, False), (1, True), (2, False), (2, True), (4, True)]
    assert launcher.jobs == one_round * 2
    assert [point.ranks for point in points] == [1, 2] and [point.ranks for point in alone] == [1, 2, 4]
    assert all(len(point.runs) == 2 for point in points + alone)


def test_a_workload_without_the_variant_is_run_alone_once_only():
    launcher = RecordingLauncher(has_variant=False)
    points, alone = measure_points(ScaleConfig(ranks=(1, 2), repeat=2), launcher, log=lambda line: None,
                                   alone_at=[1, 2])
    assert alone is None and launcher.jobs == [(1, False), (1, True), (2, False), (1, False), (2, False)]
    assert all(len(point.runs) == 2 for point in points)


def test_benchmark_without_communication_never_builds_data_parallel(monkeypatch, capsys):
    built = []
    monkeypatch.setattr(distributed, "DataParallel", lambda *args, **kwargs: built.append(args) or 1 / 0)
    values = mlp_benchmark.main([*TINY_BENCHMARK[2:], "--no-communication"])
    assert built == [] and values["communication"] == 0
    assert parse_throughput_line(capsys.readouterr().out)["communication"] == 0
    monkeypatch.setenv("MPIPROP_SCALE_NO_COMMUNICATION", "1")
    assert mlp_benchmark.build_parser().parse_args([]).no_communication
    monkeypatch.delenv("MPIPROP_SCALE_NO_COMMUNICATION")
    with pytest.raises(ZeroDivisionError):
        mlp_benchmark.main(TINY_BENCHMARK[2:])  # the training variant does build it


@pytest.mark.mpi
def test_real_sweep_writes_csv_json_and_a_plot(tmp_path, capsys):
    image = pytest.importorskip("matplotlib.image")
    out = tmp_path / "sweep"
    completed = run_mpiprop("scale", "--ranks", "1,2", "--out", str(out), "--predict", "4", "--repeat", "2", "--",
                            *TINY_BENCHMARK, cwd=str(tmp_path), timeout=SWEEP_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr

    with open(out / "scaling.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["ranks"] for row in rows] == ["1", "2", "4"]
    assert all(float(row["samples_per_s"]) > 0 for row in rows[:2]) and rows[2]["samples_per_s"] == ""
    assert all(float(row["predicted_samples_per_s"]) > 0 for row in rows)
    assert float(rows[0]["efficiency"]) == pytest.approx(1.0)
    for row in rows:
        assert float(row["predicted_samples_per_s_min"]) <= float(row["predicted_samples_per_s"]) <= \
            float(row["predicted_samples_per_s_max"])

    result = json.loads((out / "scaling.json").read_text())
    assert result["mode"] == "strong" and result["repeat"] == 2
    for key in ("mpi_library", "mpi4py", "numpy", "blas", "cores", "date"):
        assert result["environment"][key], key
    for ranks in ("1", "2"):
        assert len(result["runs"][ranks]) == 2 and len(result["alone_runs"][ranks]) == 2
        for run in result["runs"][ranks]:
            assert run["ranks"] == int(ranks) and run["global_batch"] == 16  # strong scaling: fixed global batch
            assert run["samples_per_s"] == pytest.approx(16 / run["step_s"], rel=1e-6)
            assert "communication" not in run
        assert all(run["communication"] == 0 and run["global_batch"] == 16 for run in result["alone_runs"][ranks])
    assert 0 <= result["exposed_allreduce"] <= 1 and result["overhead_s"] >= 0
    cores = Launcher.detect(MPIEXEC).cores
    four_ranks = rows[2]["prediction_basis"]
    assert ("measured alone at 4 ranks" in four_ranks) if cores >= 4 else \
        (f"exceed this node's {cores} cores" in four_ranks and "extrapolated" in four_ranks)
    assert "measured alone at 2 ranks" in rows[1]["prediction_basis"]

    with open(out / "scaling_runs.csv") as handle:
        every_run = list(csv.DictReader(handle))
    assert sorted((row["variant"], row["ranks"], row["run"]) for row in every_run) == sorted(
        (variant, ranks, run) for variant in ("data parallel", "alone") for ranks in ("1", "2") for run in ("1", "2"))
    assert {float(row["samples_per_s"]) for row in every_run if row["variant"] == "data parallel"} == \
        {run["samples_per_s"] for ranks in ("1", "2") for run in result["runs"][ranks]}

    assert (out / "scaling.png").read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(out / "scaling.png")
    assert pixels.shape[:2] == (400, 1000)
    assert pixels[..., :3].std() > 0.05
    measured_blue = (abs(pixels[..., 0] - 0.12) < 0.05) & (abs(pixels[..., 1] - 0.47) < 0.05) & \
                    (abs(pixels[..., 2] - 0.71) < 0.05)
    assert measured_blue.sum() > 50  # the measured curves are drawn
    predicted_orange = (abs(pixels[..., 0] - 1.0) < 0.05) & (abs(pixels[..., 1] - 0.5) < 0.05) & \
                       (abs(pixels[..., 2] - 0.05) < 0.05)
    assert predicted_orange.sum() > 50  # and the predicted ones

    assert "samples/s" in completed.stdout and "predicted" in completed.stdout
    assert "predicted at 4: compute" in completed.stdout and "predicted: each count's step" in completed.stderr

    assert cli.main(["model", "--from", str(out / "scaling.json"), "--layouts", "2,8,2x2"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[2].startswith("contention: compute per rank measured alone (no communication) at 1 ranks")
    two_ranks = report[4].split()
    assert two_ranks[:4] == ["2", "2", "1", "1"]
    assert float(two_ranks[-1]) == pytest.approx(float(rows[1]["samples_per_s"]), abs=0.06)
    assert report[5].split()[-1] == "-" and report[6].split()[:3] == ["4", "2", "2"]


@pytest.mark.mpi
def test_weak_sweep_from_two_ranks_runs_four_oversubscribed_and_says_what_is_extrapolated(tmp_path):
    out = tmp_path / "sweep"
    completed = run_mpiprop("scale", "--ranks", "2,4", "--mode", "weak", "--out", str(out), "--predict", "8", "--",
                            *TINY_BENCHMARK, cwd=str(tmp_path), timeout=SWEEP_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr
    result = json.loads((out / "scaling.json").read_text())
    cores = Launcher.detect(MPIEXEC).cores
    # counts beyond this node's cores take the most ranks asked for that fit it, run alone
    expected_alone = ["2"] if cores < 4 else ["2", "4"] if cores < 8 else ["2", "4", "8"]
    assert sorted(result["alone_runs"]) == expected_alone
    for ranks in ("2", "4"):
        assert result["runs"][ranks][0]["global_batch"] == 16 * int(ranks)  # weak scaling: fixed batch per rank
    assert result["overhead_s"] == 0.0  # no 1-rank run to measure it on
    rows = {row["ranks"]: row for row in result["rows"]}
    assert rows[8]["samples_per_s"] is None and rows[8]["predicted_samples_per_s"] > 0
    assert ("extrapolated" in rows[8]["prediction_basis"]) == (cores < 8)
    assert rows[2]["efficiency"] == pytest.approx(1.0)


USER_WORKLOAD = """
from mpi4py import MPI
from mpiprop.launch.throughput import format_throughput_line

if MPI.COMM_WORLD.rank == 0:
    print(format_throughput_line(1000.0 * MPI.COMM_WORLD.size, step_s=0.016, global_batch=16,
                                 compute_s_per_sample=0.001, parameter_bytes=4096))
"""


@pytest.mark.mpi
def test_a_workload_without_a_no_communication_variant_gets_the_model_without_contention(tmp_path):
    (tmp_path / "workload.py").write_text(USER_WORKLOAD)
    out = tmp_path / "sweep"
    completed = run_mpiprop("scale", "--ranks", "1", "--out", str(out), "--predict", "2", "--", "workload.py",
                            cwd=str(tmp_path), timeout=SWEEP_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr
    assert "no no-communication variant" in completed.stderr
    result = json.loads((out / "scaling.json").read_text())
    assert result["alone_runs"] == {} and "no no-communication variant" in result["prediction_note"]
    # compute 1 ms per sample on 1 rank, so 2 ranks take 16 samples / 2 * 1 ms plus the modelled allreduce
    assert result["predictions"]["2"]["compute_s"] == pytest.approx(0.008)
    assert "without contention" in result["rows"][1]["prediction_basis"]
