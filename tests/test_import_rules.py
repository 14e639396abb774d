"""The one-way dependencies, read from the source with `ast`: network/ never imports distributed/, launch/ or mpi4py;
only distributed/transport/ imports mpi4py; launch/ imports only public names of mpiprop.distributed.

A public name of mpiprop.distributed is one that its `__init__` lists in `__all__`, or that a sub-package's
`__init__` (mpiprop.distributed.data_parallel, .pipeline, ...) lists in its `__all__`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"network": "mpiprop.network", "distributed": "mpiprop.distributed", "launch": "mpiprop.launch"}


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[relative.parts[0]], *relative.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every import statement, relative ones resolved."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def exported_names(init: Path) -> set[str]:
    """The names an `__init__.py` lists in `__all__` (assigned and extended with list literals)."""
    names: set[str] = set()
    for node in ast.parse(init.read_text()).body:
        target = node.target if isinstance(node, ast.AugAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                     else None)
        if isinstance(target, ast.Name) and target.id == "__all__":
            names |= {element.value for element in node.value.elts}
    return names


def public_names() -> dict[str, set[str]]:
    """For mpiprop.distributed and each of its sub-packages: the names it exports."""
    return {module_name(init): exported_names(init) for init in (ROOT / "distributed").rglob("__init__.py")}


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def offences(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {module}"
            for path in sources(folder) for module, _, line in imports(path)
            if any(is_under(module, package) for package in forbidden)]


def test_the_rules_see_every_import_statement():
    """A test that parses nothing passes anything: the walk finds the known imports."""
    assert len(sources("network")) > 20 and len(sources("distributed")) > 40 and len(sources("launch")) > 10
    found = {module for path in sources("distributed") for module, _, _ in imports(path)}
    assert {"mpi4py", "mpiprop.distributed.transport.communicator", "mpiprop.network.backend"} <= found
    assert exported_names(ROOT / "distributed" / "__init__.py") >= {"DataParallel", "Pipeline", "start"}


def test_network_never_imports_distributed_launch_or_mpi4py():
    assert offences("network", ("mpi4py", "mpiprop.distributed", "mpiprop.launch")) == []


@pytest.mark.parametrize("folder", ["network", "distributed", "launch"])
def test_only_the_transport_imports_mpi4py(folder):
    found = offences(folder, ("mpi4py",))
    assert [where for where in found if not where.startswith("distributed/transport/")] == []


def test_distributed_never_imports_launch():
    assert offences("distributed", ("mpiprop.launch",)) == []


def test_launch_imports_only_public_names_of_distributed():
    public = public_names()
    private = []
    for path in sources("launch"):
        for module, names, line in imports(path):
            if not is_under(module, "mpiprop.distributed"):
                continue
            hidden = [name for name in names if name not in public.get(module, set())]
            if module not in public or hidden:
                private.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(hidden or names)} from {module}")
    assert private == [], "export them from mpiprop.distributed or a sub-package's __init__ (in __all__):\n" + \
        "\n".join(private)
