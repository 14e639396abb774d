"""The installed distribution: every module under mpiprop.*, nothing at the top level, beside Dask's `distributed`."""
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("network", "distributed", "launch")
SCANNED_SUFFIXES = {".py", ".sh", ".md", ".toml", ".cfg", ".txt"}
SKIPPED_FOLDERS = {".git", "build", "dist", "__pycache__"}
OLD_TOP_LEVEL = "|".join(SOURCE_FOLDERS)
OLD_IMPORT = re.compile(rf"^\s*(?:import|from)\s+(?:{OLD_TOP_LEVEL})\b", re.MULTILINE)
OLD_MODULE_RUN = re.compile(rf"-m\s+(?:{OLD_TOP_LEVEL})\b")
OLD_DOTTED_NAME = re.compile(rf"[\"'](?:{OLD_TOP_LEVEL})\.[a-z_]")  # "network.trainer.x" for patching or importing


def site_packages() -> list[Path]:
    """Where this environment installs packages (the virtual environment may lie inside the repository)."""
    return sorted({Path(sysconfig.get_paths()[kind]).resolve() for kind in ("purelib", "platlib")})


def installed() -> importlib.metadata.Distribution:
    """The installed mpiprop, not the egg-info a build may leave in the source tree (on sys.path under pytest)."""
    found = next(iter(importlib.metadata.distributions(name="mpiprop", path=[str(p) for p in site_packages()])), None)
    if found is None:
        pytest.fail(f"mpiprop is not installed in {sys.prefix}; install it with pip install '.[test]'")
    return found


def is_editable(distribution: importlib.metadata.Distribution) -> bool:
    direct_url = distribution.read_text("direct_url.json")
    return bool(direct_url) and json.loads(direct_url).get("dir_info", {}).get("editable", False)


def source_module_names() -> list[str]:
    """`mpiprop.<folder>.<...>` for every package and module of the source tree (entry points excluded)."""
    names = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((REPOSITORY_ROOT / folder).rglob("*.py")):
            parts = path.relative_to(REPOSITORY_ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            names.append(".".join(("mpiprop", *parts)))
    return names


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter outside the source tree, so only the installed package can be imported."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_every_source_module_imports_from_the_installed_distribution(tmp_path):
    names = source_module_names()
    assert "mpiprop.distributed.transport.world" in names and "mpiprop.network.optim" in names
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError as error:\n"
            "        print(f'{name}: {error}')\n")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", ("modules of the source tree that the installed mpiprop lacks (is a sub-package "
                                 f"missing from pyproject.toml's `packages`?):\n{result.stdout}")


def test_installed_files_lie_only_under_mpiprop():
    distribution = installed()
    if is_editable(distribution):
        pytest.skip("an editable install records its import hook, not the package's files; "
                    "a non-editable install (pip install .) is checked")
    stray = [str(path) for path in distribution.files if not in_distribution_place(path)]
    assert stray == [], f"the mpiprop distribution installs files outside mpiprop/: {stray}"


def in_distribution_place(path: importlib.metadata.PackagePath) -> bool:
    top = path.parts[0]
    return top == "mpiprop" or (top.startswith("mpiprop-") and top.endswith(".dist-info")) or (
        ".." in path.parts and path.name == "mpiprop" and path.parent.name in ("bin", "Scripts"))


def test_dask_distributed_and_mpiprop_distributed_import_side_by_side(tmp_path):
    code = ("import importlib\n"
            "dask_distributed = importlib.import_module('distributed')\n"
            "ours = importlib.import_module('mpiprop.distributed')\n"
            "print(dask_distributed.__file__)\n"
            "print(ours.__file__)\n"
            "print(hasattr(dask_distributed, 'Client'), hasattr(ours, 'DataParallel'))\n")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, ("Dask's distributed (in the test extra: pip install '.[test]') and "
                                    f"mpiprop.distributed must both import:\n{result.stderr}")
    dask_file, our_file, attributes = result.stdout.splitlines()[-3:]
    assert Path(dask_file).parent.name == "distributed" and Path(dask_file).parent.parent.name != "mpiprop"
    assert Path(our_file).parent.parent.name == "mpiprop" or Path(our_file).is_relative_to(REPOSITORY_ROOT)
    assert dask_file != our_file and attributes == "True True"


def skipped_folder(name: str) -> bool:
    """Folders that hold no source of ours: git's, build output, virtual environments, egg-info."""
    return name in SKIPPED_FOLDERS or name.startswith(".venv") or name.endswith(".egg-info")


def scanned_files() -> list[Path]:
    files = [REPOSITORY_ROOT / ".ci" / "run"]
    for folder, subfolders, names in os.walk(REPOSITORY_ROOT):
        subfolders[:] = sorted(name for name in subfolders if not skipped_folder(name))
        files += [Path(folder) / name for name in sorted(names) if Path(name).suffix in SCANNED_SUFFIXES]
    this_file = Path(__file__).resolve()  # its examples of old names are meant to match
    return [path for path in files if path.exists() and path != this_file]


def test_no_file_uses_the_old_top_level_names():
    offending = []
    for path in scanned_files():
        text = path.read_text(errors="replace")
        for pattern in (OLD_IMPORT, OLD_MODULE_RUN, OLD_DOTTED_NAME):
            offending += [f"{path.relative_to(REPOSITORY_ROOT)}: {match.group(0).strip()}"
                          for match in pattern.finditer(text)]
    assert offending == [], ("these lines use the old top-level names; write mpiprop.network, "
                             "mpiprop.distributed, mpiprop.launch instead:\n" + "\n".join(offending))


def test_old_name_patterns_catch_what_they_should():
    assert OLD_IMPORT.search("x = 1\n    from distributed.transport import world\n")
    assert OLD_IMPORT.search("import network as nn\n")
    assert OLD_MODULE_RUN.search("python -m launch run -n 2")
    assert OLD_DOTTED_NAME.search('monkeypatch.setattr("network.progress.sys", None)')
    assert not OLD_DOTTED_NAME.search('monkeypatch.setattr("mpiprop.network.training.progress.sys", None)')
    assert not OLD_IMPORT.search("from mpiprop import distributed\nimport mpiprop.network as nn\n")
    assert not OLD_MODULE_RUN.search("python -m mpiprop.launch run -n 2")


def test_non_editable_install_loads_from_outside_the_source_tree(tmp_path):
    if is_editable(installed()):
        pytest.skip("an editable install loads the source tree by design; a non-editable install (pip install .) "
                    "is checked")
    result = run_python("import mpiprop.network; print(mpiprop.network.__file__)", tmp_path)
    assert result.returncode == 0, result.stderr
    loaded_from = Path(result.stdout.strip())
    assert any(loaded_from.resolve().is_relative_to(folder) for folder in site_packages()), (
        f"mpiprop.network was loaded from {loaded_from}, not from this environment's site-packages, although "
        "mpiprop is installed non-editably")
