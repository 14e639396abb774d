"""Habits from other launchers: `-np`, a leading `python`, `--version`; and the version every package reports."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpiprop.launch import cli

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pyproject_version() -> str:
    found = re.search(r'^version = "([^"]+)"', PYPROJECT.read_text(), re.MULTILINE)
    assert found, f"no version in {PYPROJECT}"
    return found.group(1)


def dry_run(monkeypatch, capsys, *arguments: str) -> str:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert cli.main(["run", "--dry-run", *arguments]) == 0
    return capsys.readouterr().out


def test_np_is_n(monkeypatch, capsys):
    assert dry_run(monkeypatch, capsys, "-np", "3", "train.py", "-n", "5") == \
        dry_run(monkeypatch, capsys, "-n", "3", "train.py", "-n", "5")


@pytest.mark.parametrize("interpreter", ["python", "python3", "python3.11", sys.executable])
def test_a_leading_python_is_dropped(monkeypatch, capsys, interpreter):
    expected = dry_run(monkeypatch, capsys, "-n", "2", "train.py", "--lr", "0.1")
    assert dry_run(monkeypatch, capsys, "-n", "2", interpreter, "train.py", "--lr", "0.1") == expected
    assert expected.split()[-6:] == [sys.executable, "-m", "mpiprop.launch.bootstrap", "train.py", "--lr", "0.1"]


def test_a_leading_python_before_a_module_is_dropped(monkeypatch, capsys):
    assert dry_run(monkeypatch, capsys, "-n", "2", "python", "-m", "pkg.train").split()[-4:] == [
        "-m", "mpiprop.launch.bootstrap", "-m", "pkg.train"]


def test_a_script_named_like_python_is_kept(monkeypatch, capsys):
    assert dry_run(monkeypatch, capsys, "-n", "2", "python_train.py").split()[-1] == "python_train.py"


def test_pythons_own_options_are_refused_with_the_fix(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "-n", "2", "--dry-run", "python", "-u", "train.py"])
    assert exit_info.value.code == 2
    assert "Python's option '-u' cannot be passed on" in capsys.readouterr().err


def test_version_option_prints_the_installed_version():
    completed = subprocess.run([sys.executable, "-m", "mpiprop.launch", "--version"], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"mpiprop {pyproject_version()}\n"


def test_every_package_reports_pyprojects_version():
    import mpiprop.distributed
    import mpiprop.launch
    import mpiprop.network

    expected = pyproject_version()
    assert (mpiprop.network.__version__, mpiprop.distributed.__version__, mpiprop.launch.__version__) == \
        (expected, expected, expected)
    with pytest.raises(AttributeError, match="no attribute 'version'"):
        mpiprop.launch.version


def test_readmes_first_command_trains_under_mpiprop_run_and_says_why():
    text = (PYPROJECT.parent / "README.md").read_text()
    first = next(line for line in text.splitlines() if line.startswith("    python3 -m venv .venv"))
    assert first == ("    python3 -m venv .venv && . .venv/bin/activate && pip install '.[examples,mpich]' && "
                     "mpiprop run -n 2 examples/train_digits.py")
    after = text.split(first, 1)[1].split("\n\n")[1]
    assert "ends the job only under `mpiprop run`" in " ".join(after.split()) and "mpiexec" in after
