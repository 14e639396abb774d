"""mpiprop.distributed's launcher-variable module, loaded alone (importing mpiprop.distributed loads the whole package)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

MODULE_NAME = "mpiprop.launch.launcher_variables.launcher_environment"  # a name of its own: no parent to import


def launcher_environment() -> ModuleType:
    """`mpiprop.distributed.transport.launcher_environment`, read from its file.

    Importing it by name would first run `mpiprop.distributed`'s `__init__`, which imports every module
    of the package (and with them the array libraries): `mpiprop run` starts faster without, and a rank
    chooses its GPU before any of them is loaded.
    """
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    package = importlib.util.find_spec("mpiprop.distributed")
    path = Path(list(package.submodule_search_locations)[0]) / "transport" / "launcher_environment.py"
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module
