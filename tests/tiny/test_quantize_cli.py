"""`qfid quantize` end to end on the tiny random Llama: every scheme and format writes a
checkpoint that qfid.load reads back, and bad input fails with one line and exit 2."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.cli_helpers import run_cli


@pytest.mark.parametrize("args", [
    ["--scheme", "rtn-int4"],
    ["--scheme", "rtn-int4", "--format", "compressed-tensors"],
    ["--scheme", "awq-int4", "--calib-samples", "4", "--calib-seq-len", "64"],
    ["--scheme", "fp8", "--weights", "tensor"],
    ["--scheme", "fp8", "--activations", "static", "--calib-samples", "2", "--calib-seq-len", "64"],
])
def test_quantize_writes_loadable_checkpoint(tiny_llama_dir, tmp_path, capsys, monkeypatch, args):
    import qfid

    out = tmp_path / "q"
    result = run_cli(["quantize", tiny_llama_dir, "-o", out, *args], capsys, monkeypatch)
    assert result.exit_code == 0, result.err
    assert "layers quantized" in result.out
    meta = json.loads((out / "qfid_quant.json").read_text())
    assert meta["scheme"] == args[1]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] in ("awq", "compressed-tensors")
    model = qfid.load(str(out))
    ids = torch.randint(0, 300, (1, 12))
    logits = model(ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()
    # nothing half-written beside the output
    assert [p.name for p in tmp_path.iterdir()] == ["q"]


def test_group_size_must_divide_widths(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    # the tiny model's widths are 256 and 512; 1024 divides neither
    result = run_cli(["quantize", tiny_llama_dir, "-o", tmp_path / "q", "--scheme", "rtn-int4", "--group-size", "1024"],
                     capsys, monkeypatch)
    assert result.exit_code == 2
    assert "group size 1024 does not divide input width" in result.err and "--group-size" in result.err
    assert not (tmp_path / "q").exists()


def test_missing_model_dir(tmp_path, capsys, monkeypatch):
    result = run_cli(["quantize", tmp_path / "nope", "-o", tmp_path / "q"], capsys, monkeypatch)
    assert result.exit_code == 2
    assert result.err.startswith("error: model not found") and result.err.count("\n") == 1


def test_unsupported_architecture(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    model = tmp_path / "gpt"
    shutil.copytree(tiny_llama_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli(["quantize", model, "-o", tmp_path / "q"], capsys, monkeypatch)
    assert result.exit_code == 2 and "unsupported architecture 'GPT2LMHeadModel'" in result.err


def test_already_quantized_checkpoint_is_refused(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    first = run_cli(["quantize", tiny_llama_dir, "-o", tmp_path / "q", "--scheme", "rtn-int4"], capsys, monkeypatch)
    assert first.exit_code == 0, first.err
    again = run_cli(["quantize", tmp_path / "q", "-o", tmp_path / "q2"], capsys, monkeypatch)
    assert again.exit_code == 2 and "already quantized (awq)" in again.err


def test_existing_output_needs_overwrite(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "q").mkdir()
    result = run_cli(["quantize", tiny_llama_dir, "-o", tmp_path / "q", "--scheme", "rtn-int4"], capsys, monkeypatch)
    assert result.exit_code == 2 and "already exists" in result.err


def test_pickle_only_folder_is_refused(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    model = tmp_path / "pickled"
    model.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", model / "config.json")
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    result = run_cli(["quantize", model, "-o", tmp_path / "q"], capsys, monkeypatch)
    assert result.exit_code == 2 and "no .safetensors weights" in result.err
