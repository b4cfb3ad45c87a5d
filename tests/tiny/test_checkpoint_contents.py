"""What a checkpoint folder holds is exactly what loaders expect: vLLM reads every top-level
`*.safetensors` file as weights, so a stray tensor file (the AWQ artifact once was one)
makes it refuse the model.

The expected tensor names are derived here from the *source* checkpoint by suffix rules
written in this test (not taken from the writer): each quantized Linear's `.weight` becomes
its format's tensors, every other tensor keeps its name.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from qfid.config import QuantConfig
from qfid.quant.pipeline import quantize_model

QUANTIZED = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj"
                       r"|block_sparse_moe\.experts\.\d+\.w[123])\.weight$")
SUFFIXES = {
    "autoawq": ("qweight", "qzeros", "scales"),
    "ct-int4": ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"),
    "fp8": ("weight", "weight_scale"),
    "fp8-static": ("weight", "weight_scale", "input_scale"),
}
TOP_LEVEL_ALLOWED = re.compile(
    r"^(config\.json|generation_config\.json|model\.safetensors|model-\d{5}-of-\d{5}\.safetensors"
    r"|model\.safetensors\.index\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json"
    r"|chat_template\.jinja|qfid_quant\.json|qfid)$")
SMALL_CALIB = {"calib_samples": 2, "calib_seq_len": 64}

CASES = {
    "rtn-autoawq": ({"scheme": "rtn-int4"}, "autoawq"),
    "rtn-ct": ({"scheme": "rtn-int4", "format": "compressed-tensors"}, "ct-int4"),
    "awq-autoawq": ({"scheme": "awq-int4", **SMALL_CALIB}, "autoawq"),
    "awq-ct": ({"scheme": "awq-int4", "format": "compressed-tensors", **SMALL_CALIB}, "ct-int4"),
    "fp8-channel-dynamic": ({"scheme": "fp8"}, "fp8"),
    "fp8-tensor-dynamic": ({"scheme": "fp8", "fp8_weights": "tensor"}, "fp8"),
    "fp8-channel-static": ({"scheme": "fp8", "fp8_activations": "static", **SMALL_CALIB}, "fp8-static"),
    "fp8-tensor-static": ({"scheme": "fp8", "fp8_weights": "tensor", "fp8_activations": "static", **SMALL_CALIB},
                          "fp8-static"),
}
MOE_CASES = ["rtn-autoawq", "awq-ct", "fp8-channel-dynamic"]   # static FP8 is refused for MoE


def tensor_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            names |= set(f.keys())
    return names


def expected_names(source: Path, layout: str) -> set[str]:
    names = set()
    for name in tensor_names(source):
        if QUANTIZED.match(name):
            names |= {f"{name[: -len('weight')]}{leaf}" for leaf in SUFFIXES[layout]}
        else:
            names.add(name)
    return names


def _quantize(source: Path, out: Path, key: str) -> Path:
    kwargs, _ = CASES[key]
    quantize_model(str(source), QuantConfig(**kwargs), out)
    return out


@pytest.mark.parametrize("key", list(CASES))
def test_llama_checkpoint_holds_exactly_the_derived_tensors(tiny_llama_dir, tmp_path, key):
    out = _quantize(tiny_llama_dir, tmp_path / key, key)
    assert tensor_names(out) == expected_names(tiny_llama_dir, CASES[key][1])
    stray = [p.name for p in out.iterdir() if not TOP_LEVEL_ALLOWED.match(p.name)]
    assert stray == [], f"files a loader would mis-read: {stray}"
    if key.startswith("awq"):
        assert (out / "qfid" / "awq_artifact.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("key", MOE_CASES)
def test_mixtral_checkpoint_holds_exactly_the_derived_tensors(tiny_mixtral_dir, tmp_path, key):
    out = _quantize(tiny_mixtral_dir, tmp_path / key, key)
    assert tensor_names(out) == expected_names(tiny_mixtral_dir, CASES[key][1])
    assert all(TOP_LEVEL_ALLOWED.match(p.name) for p in out.iterdir())


def _modes(folder: Path) -> tuple[set[int], set[int]]:
    files, dirs = set(), {stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        (dirs if path.is_dir() else files).add(stat.S_IMODE(path.stat().st_mode))
    return files, dirs


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_checkpoint_files_follow_the_umask(tiny_llama_dir, tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        out = _quantize(tiny_llama_dir, tmp_path / "q", "awq-autoawq")
    finally:
        os.umask(previous)
    assert (out / "qfid").is_dir()
    assert _modes(out) == ({file_mode}, {dir_mode})


def test_artifact_reader_finds_the_pre_move_top_level_file(tiny_llama_dir, tmp_path):
    """Checkpoints written before the artifact moved under qfid/ still replay."""
    from qfid.models.loading import load_dense_model, model_arch, read_config
    from qfid.quant.artifact import LEGACY_AWQ_ARTIFACT, read_awq_artifact
    from qfid.quant.awq import apply_awq_artifact
    from qfid.quant.formats import load_quantized_or_dense
    from qfid.layouts.packing import as_stored

    out = _quantize(tiny_llama_dir, tmp_path / "q", "awq-autoawq")
    current = read_awq_artifact(out)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    shutil.move(old / "qfid" / "awq_artifact.safetensors", old / LEGACY_AWQ_ARTIFACT)
    shutil.rmtree(old / "qfid")
    legacy = read_awq_artifact(old)
    assert legacy.keys() == current.keys() and all(torch.equal(legacy[k], current[k]) for k in current)
    model, _ = load_dense_model(tiny_llama_dir)
    group = read_config(out)["quantization_config"]["group_size"]
    replayed = apply_awq_artifact(model, model_arch(read_config(tiny_llama_dir)), legacy, group)
    loaded = load_quantized_or_dense(out)
    for name, weight in replayed.items():
        assert torch.equal(loaded.get_submodule(name).dequantize(), as_stored(weight).dequantize()), name


def test_artifact_reader_error_is_one_line(tiny_llama_dir):
    from qfid.errors import QfidError
    from qfid.quant.artifact import read_awq_artifact

    with pytest.raises(QfidError, match="has no AWQ search artifact"):
        read_awq_artifact(tiny_llama_dir)
