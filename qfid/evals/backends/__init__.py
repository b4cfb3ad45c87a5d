"""Model backends for `qfid eval`: one small interface (base.Backend), one module each.

`make_backend` imports the chosen backend lazily, so `--backend openai` never loads torch.
"""
from __future__ import annotations

from qfid.errors import QfidError

BACKENDS = ("engine", "hf", "openai")


def make_backend(kind: str, model: str, **options):
    from qfid.evals.validation import did_you_mean

    if kind == "engine":
        from qfid.evals.backends.engine import EngineBackend

        return EngineBackend.from_model(model, **options)
    if kind == "hf":
        from qfid.evals.backends.hf import HFBackend

        return HFBackend.from_model(model, **options)
    if kind == "openai":
        from qfid.evals.backends.openai import OpenAIBackend

        return OpenAIBackend(model=model, **options)
    raise QfidError(f"unknown backend {kind!r}; one of {', '.join(BACKENDS)}{did_you_mean(kind, BACKENDS)}")
