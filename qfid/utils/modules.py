"""Import a Python file that is not on sys.path (kernel sources, suite generators)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_file(name: str, path: Path) -> ModuleType:
    """Import `path` once as module `name`. Registered in sys.modules before it runs, so code
    that looks itself up there (dataclasses, Triton reading a jitted function's source)
    works; removed again if it fails."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
