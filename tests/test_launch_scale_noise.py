"""mpiprop scale with one run per rank count: its efficiency is noise-bound, and the output says so."""
from __future__ import annotations

import csv
import json

import pytest

from mpiprop.launch import cli, scale
from mpiprop.launch.runner import Launcher
from mpiprop.launch.scale import ScalePoint, scaling_rows, single_run_warning
from mpiprop.launch.throughput import format_throughput_line


def point(ranks: int, *throughputs: float) -> ScalePoint:
    return ScalePoint(ranks, [{"samples_per_s": value, "step_s": 64 / value} for value in throughputs])


def test_one_run_per_count_is_warned_about_and_several_are_not():
    warning = single_run_warning([point(1, 100.0), point(2, 334.0)])
    assert "one run at 1, 2 rank(s)" in warning and "--repeat" in warning
    assert "one run at 2 rank(s)" in single_run_warning([point(1, 100.0, 110.0), point(2, 334.0)])
    assert single_run_warning([point(1, 100.0, 90.0), point(2, 180.0, 170.0)]) is None
    assert single_run_warning([point(2, 100.0)]) is None  # one count: no efficiency to doubt


def test_rows_count_their_runs():
    rows = scaling_rows([point(1, 100.0, 120.0, 110.0), point(2, 200.0)])
    assert [row["runs"] for row in rows] == [3, 1]


class NoisyLauncher:
    """Answers each run with the next of `throughputs` (1 rank, 2 ranks, 1 rank, ...: a loaded machine)."""

    cores = 2
    throughputs = iter(())

    def run_captured(self, options, timeout=None) -> str:
        return format_throughput_line(next(self.throughputs))


@pytest.fixture
def noisy_sweep(monkeypatch, tmp_path):
    monkeypatch.setattr(Launcher, "detect", classmethod(lambda cls, requested="auto": NoisyLauncher()))
    monkeypatch.setattr(scale, "describe_environment", lambda: {"cores": 2})
    monkeypatch.setattr(NoisyLauncher, "throughputs", iter([100.0, 334.0, 100.0, 200.0, 100.0, 200.0]))
    return tmp_path / "sweep"


def read_outputs(out):
    with open(out / "scaling.csv") as handle:
        rows = list(csv.DictReader(handle))
    return rows, json.loads((out / "scaling.json").read_text())


def test_a_sweep_of_single_runs_warns_and_marks_its_csv_and_json(noisy_sweep, capsys):
    assert cli.main(["scale", "--ranks", "1,2", "--out", str(noisy_sweep)]) == 0
    stderr = capsys.readouterr().err
    rows, result = read_outputs(noisy_sweep)
    assert float(rows[1]["efficiency"]) == pytest.approx(1.67)  # the kind of figure one run can give
    assert [row["runs"] for row in rows] == ["1", "1"]
    assert "cannot separate the speedup and efficiency from the machine's noise" in result["noise_warning"]
    assert f"mpiprop scale: warning: {result['noise_warning']}" in stderr


def test_a_repeated_sweep_has_no_warning(noisy_sweep, capsys):
    assert cli.main(["scale", "--ranks", "1,2", "--repeat", "3", "--out", str(noisy_sweep)]) == 0
    stderr = capsys.readouterr().err
    rows, result = read_outputs(noisy_sweep)
    assert [row["runs"] for row in rows] == ["3", "3"]
    assert result["noise_warning"] is None and "warning: one run" not in stderr
