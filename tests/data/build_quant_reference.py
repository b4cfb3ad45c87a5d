"""Build tests/data/quant_reference/: tiny source models and what `qfid quantize` wrote for
them *before* the streaming pipeline (commit "quant reference checkpoints", issue #11).

tests/tiny/test_quant_reference.py quantizes the same sources with the current code and
compares: RTN and FP8 (static and dynamic) bit for bit, AWQ with the same chosen scales and
clip steps. Re-running this script with today's code would overwrite the *pre-change*
reference with the current code's output: don't, unless the reference is meant to move.

    .venv/bin/python tests/data/build_quant_reference.py
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from qfid.config import QuantConfig
from qfid.quant.pipeline import quantize_model
from qfid.testing.tiny import make_tiny_llama, make_tiny_mixtral

ROOT = Path(__file__).resolve().parent / "quant_reference"
CALIB = {"calib_samples": 4, "calib_seq_len": 64}
CASES = {
    "rtn": {"scheme": "rtn-int4"},
    "awq": {"scheme": "awq-int4", **CALIB},
    "fp8-channel-dynamic": {"scheme": "fp8"},
    "fp8-tensor-static": {"scheme": "fp8", "fp8_weights": "tensor", "fp8_activations": "static", **CALIB},
}
SOURCES = {
    # v -> o applies (no GQA) in the Llama; the Mixtral has GQA and 4 experts.
    "llama": lambda path: make_tiny_llama(path, hidden=64, intermediate=128, heads=4, kv_heads=4, seed=3),
    "mixtral": lambda path: make_tiny_mixtral(path, hidden=64, intermediate=64, heads=4, kv_heads=2, seed=3),
}
MOE_CASES = ("rtn", "awq", "fp8-channel-dynamic")   # static FP8 is refused for MoE


def main() -> None:
    torch.set_num_threads(1)
    shutil.rmtree(ROOT, ignore_errors=True)
    for family, make in SOURCES.items():
        source = make(ROOT / family / "source")
        for case, kwargs in CASES.items():
            if family == "mixtral" and case not in MOE_CASES:
                continue
            quantize_model(str(source), QuantConfig(**kwargs), ROOT / family / case)
            for side in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
                (ROOT / family / case / side).unlink(missing_ok=True)   # the source's; kept once


if __name__ == "__main__":
    main()
