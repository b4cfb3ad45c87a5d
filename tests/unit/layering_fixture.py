"""Not a qfid module: test_layering feeds it to the checker as if it were
`qfid/models/layering_fixture.py`, to prove that forbidden imports are caught wherever they
hide (inside a function, relative), and that allowed ones pass. Never imported."""
from __future__ import annotations

from qfid import __version__  # allowed anywhere
from qfid.errors import QfidError  # allowed: errors is below models

__all__ = ["__version__", "QfidError", "evaluate", "runtime"]


def evaluate():
    from qfid.evals.store import RunStore  # forbidden: evals is above models

    return RunStore


def runtime():
    from ..engine import llm  # forbidden: engine is above models (relative import)

    return llm
