"""The default-model flow as a user runs it: `qfid quantize smollm2-135m` for each scheme,
then held-out perplexity (text never used for calibration) of the checkpoints as written.

Shows: AWQ INT4 is closer to the fp32 baseline than RTN INT4 at the same (auto-chosen, 64)
group size, FP8 per-channel closer still; INT4 linears take at most 0.30x of fp16 bytes and
FP8 at most 0.52x. AWQ closes at least 62% of RTN's gap (dAWQ/dRTN <= 0.38, what a correct
AutoAWQ reaches on this model; llm-compressor's AWQ without clip search reaches 0.47). The
default run (built-in corpus, 16 x 512 tokens, seed 0) measures 0.359 on this machine.
"""
from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli

pytestmark = [pytest.mark.real, pytest.mark.slow]

MAX_GAP_RATIO = 0.38

SCHEMES = {
    "awq-int4": ["--scheme", "awq-int4"],
    "rtn-int4": ["--scheme", "rtn-int4"],
    "fp8": ["--scheme", "fp8", "--weights", "channel"],
}


@pytest.fixture(scope="module")
def checkpoints(default_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-quant")
    mp = pytest.MonkeyPatch()
    outputs = {}
    for name, args in SCHEMES.items():
        outputs[name] = root / name
        outputs[f"{name}-stdout"] = _run(["quantize", "smollm2-135m", "-o", outputs[name], *args], mp)
    mp.undo()
    return outputs


def _run(args, monkeypatch):
    import io
    import sys

    from qfid.cli.app import main

    monkeypatch.setattr(sys, "argv", ["qfid", *[str(a) for a in args]])
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, f"qfid {args} exited {exc.code}"
    finally:
        monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    return buf.getvalue()


@pytest.fixture(scope="module")
def heldout(checkpoints, default_model_dir):
    from qfid.quant.heldout import heldout_perplexity

    return {"fp32": heldout_perplexity(default_model_dir),
            **{name: heldout_perplexity(checkpoints[name]) for name in SCHEMES}}


def _meta(checkpoints, name):
    return json.loads((checkpoints[name] / "qfid_quant.json").read_text())


def test_default_model_awq_flow_summary(checkpoints):
    assert "layers quantized" in checkpoints["awq-int4-stdout"]
    meta = _meta(checkpoints, "awq-int4")
    assert meta["summary"]["layers_quantized"] == 210          # 30 blocks x 7 linears
    assert meta["group_size"] == 64 and meta["group_size_auto"] is True
    qc = json.loads((checkpoints["awq-int4"] / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm" and qc["group_size"] == 64


def test_awq_closes_most_of_rtn_gap_and_fp8_is_closer(heldout):
    d_awq = heldout["awq-int4"] - heldout["fp32"]
    d_rtn = heldout["rtn-int4"] - heldout["fp32"]
    d_fp8 = heldout["fp8"] - heldout["fp32"]
    assert 0 < d_awq < d_rtn, heldout
    assert d_awq / d_rtn <= MAX_GAP_RATIO, heldout
    assert abs(d_fp8) < d_awq, heldout


def test_checkpoint_linear_sizes(checkpoints):
    for name, limit in (("awq-int4", 0.30), ("rtn-int4", 0.30), ("fp8", 0.52)):
        ratio = _meta(checkpoints, name)["summary"]["linear_ratio_vs_fp16"]
        assert ratio <= limit, (name, ratio)
