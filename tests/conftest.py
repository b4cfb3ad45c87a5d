"""Shared fixtures: tiny random models (built once per session) and the real default model."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton's jit reads TRITON_INTERPRET when triton is first imported, and importing
# transformers' modeling code imports triton: set here, before any test module is collected,
# so the interpreter tests (test_kernels_triton, test_engine_triton) run interpreted on CPU
# whatever another module imports first. On a GPU machine it stays unset (compiled kernels).
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from qfid.testing.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_mixtral_dir(tmp_path_factory):
    from qfid.testing.tiny import make_tiny_mixtral

    return make_tiny_mixtral(tmp_path_factory.mktemp("tiny-mixtral"))


@pytest.fixture(scope="session")
def default_model_dir():
    """SmolLM2-135M-Instruct as a safetensors folder (installed/converted once, cached)."""
    from qfid.models.default import ensure_default_model

    return ensure_default_model()


@pytest.fixture
def reference_kernels(monkeypatch):
    """Run quantized layers through the torch reference (dequantize, then F.linear) for tests
    that check exact decoding; the fast kernels are checked against it in test_kernels_*."""
    monkeypatch.setenv("QFID_KERNEL", "reference")
