"""The built wheel's metadata: the MIT license (PEP 639 expression and file), classifiers, and the build floor."""
from __future__ import annotations

import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = REPOSITORY_ROOT / "pyproject.toml"
SOURCES = ("pyproject.toml", "LICENSE", "README.md", "network", "distributed", "launch")
LICENSE_EXPRESSION_SETUPTOOLS = (77, 0, 3)  # the first setuptools that builds `license = "MIT"` with license-files


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel pip builds from a copy of the source tree with this environment's setuptools."""
    installed = importlib.metadata.version("setuptools")
    if version_tuple(installed) < LICENSE_EXPRESSION_SETUPTOOLS:
        pytest.skip(f"setuptools {installed} cannot build this project; pyproject.toml asks for >=77.0.3")
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        copy = shutil.copytree if (REPOSITORY_ROOT / name).is_dir() else shutil.copy2
        copy(REPOSITORY_ROOT / name, source / name)
    completed = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                                "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return zipfile.ZipFile(next(out.glob("mpiprop-*.whl")))


def metadata(wheel: zipfile.ZipFile):
    name = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def test_the_wheel_declares_the_mit_license_and_carries_its_text(wheel):
    fields = metadata(wheel)
    assert fields["License-Expression"] == "MIT"
    assert fields.get_all("License-File") == ["LICENSE"]
    license_file = next(name for name in wheel.namelist() if name.endswith(".dist-info/licenses/LICENSE"))
    text = wheel.read(license_file).decode()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the mpiprop authors" in text
    assert text == (REPOSITORY_ROOT / "LICENSE").read_text()


def test_the_wheel_has_classifiers_for_its_pythons_system_and_topic(wheel):
    fields = metadata(wheel)
    classifiers = fields.get_all("Classifier")
    minimum = fields["Requires-Python"].removeprefix(">=")
    assert minimum == "3.10"
    for python in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {python}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers  # the launcher finds a job's processes in /proc
    assert any(classifier.startswith("Topic :: ") for classifier in classifiers)
    assert not any(classifier.startswith("License :: ") for classifier in classifiers)  # PEP 639 forbids both
    assert fields.get_all("Project-URL") is None  # the project has no public address yet: none is invented


def test_the_build_floor_is_the_setuptools_that_builds_it():
    floor = re.search(r'requires = \["setuptools>=([0-9.]+)"\]', PYPROJECT.read_text())
    assert floor, "pyproject.toml's [build-system] must ask for a setuptools version"
    assert version_tuple(floor.group(1)) == LICENSE_EXPRESSION_SETUPTOOLS
