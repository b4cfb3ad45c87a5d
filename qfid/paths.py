"""Where qfid keeps things: the user cache, the bundled suites and kernel sources.

The bundled directories live at the repo root in a checkout (editable install) and under
`qfid/_bundled/` in a wheel; callers never need to know which.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def cache_dir() -> Path:
    """`$QFID_CACHE`, else `$XDG_CACHE_HOME/qfid`, else `~/.cache/qfid`."""
    if os.environ.get("QFID_CACHE"):
        return Path(os.environ["QFID_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "qfid"


def bundled_dir(name: str) -> Path:
    """A directory shipped with qfid (`evalsuites`, `kernels`), wherever it was installed."""
    installed = PACKAGE_DIR / "_bundled" / name
    return installed if installed.is_dir() else REPO_ROOT / name


def data_dir() -> Path:
    """Package data shipped inside the qfid package itself (calibration corpus, ...)."""
    return PACKAGE_DIR / "data"
