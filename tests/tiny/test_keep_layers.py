"""`QuantConfig.keep`: sensitive layers kept in FP8 or 16 bits inside an INT4 checkpoint.

The other layers are bit for bit what the same run without `keep` writes (keeping changes
storage, not the search); a kept layer holds the weight the search left in the block (for
AWQ: W x s, the scale's inverse folded into the layer before it, and rows divided by the
next mapping's scale where the layer is that mapping's smooth layer), in FP8 within E4M3's
rounding or exactly in the source dtype. The checkpoint round-trips through qfid's loader,
the compressed-tensors library and qfid's engine (greedy tokens equal `generate` of the
loaded model)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qfid import LLM, SamplingParams
from qfid.config import QuantConfig
from qfid.errors import QfidError
from qfid.quant.pipeline import quantize_model

CALIB = {"calib_samples": 2, "calib_seq_len": 64}
KEPT_UNITS = ["model.layers.1.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
FP8_RELATIVE_STEP = 2 ** -3   # E4M3 keeps 3 mantissa bits: rounding moves a value by < 1/16 of it (+ tiny denormals)


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for path in folder.glob("*.safetensors"):
        out.update(load_file(path))
    return out


def _awq_scale(artifact: dict, name: str) -> torch.Tensor:
    """The AWQ scale folded into `name`'s input columns (keyed by the mapping's smooth layer);
    none for o_proj under grouped-query attention (v -> o needs equal shapes), as here."""
    smooth = {"self_attn.o_proj": "self_attn.v_proj", "mlp.gate_proj": "post_attention_layernorm",
              "mlp.up_proj": "post_attention_layernorm"}
    block, rel = name.rsplit(".", 2)[0], ".".join(name.rsplit(".", 2)[1:])
    key = f"{block}.{smooth[rel]}.awq_scale"
    return artifact[key] if key in artifact else torch.tensor(1.0).expand(1)


@pytest.fixture(scope="module")
def awq_runs(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    runs = {}
    for name, extra in {"base": {}, "fp8": {"keep": KEPT_UNITS, "keep_as": "fp8"},
                        "bf16": {"keep": KEPT_UNITS, "keep_as": "bf16", "format": "compressed-tensors"},
                        "fp8-replayed": {"keep": KEPT_UNITS, "keep_as": "fp8", "awq_search_from": str(root / "base")}}.items():
        base_format = {"format": "compressed-tensors"} if name == "base" else {}
        quantize_model(str(tiny_llama_dir), QuantConfig(scheme="awq-int4", **CALIB, **base_format, **extra), root / name)
        runs[name] = root / name
    return runs


def test_replaying_the_base_search_writes_the_searched_keep_checkpoint_bit_for_bit(awq_runs):
    """What the sweep does for +keep:N: the base's saved scales and clips instead of a new search."""
    searched, replayed = _tensors(awq_runs["fp8"]), _tensors(awq_runs["fp8-replayed"])
    assert set(searched) == set(replayed) and all(torch.equal(searched[k], replayed[k]) for k in searched)
    artifact = load_file(awq_runs["fp8"] / "qfid" / "awq_artifact.safetensors")
    again = load_file(awq_runs["fp8-replayed"] / "qfid" / "awq_artifact.safetensors")
    assert set(artifact) == set(again) and all(torch.equal(artifact[k], again[k]) for k in artifact)
    config = [json.loads((awq_runs[n] / "config.json").read_text())["quantization_config"] for n in ("fp8", "fp8-replayed")]
    assert config[0] == config[1]
    meta = json.loads((awq_runs["fp8-replayed"] / "qfid_quant.json").read_text())
    assert meta["awq"]["search_from"] == str(awq_runs["base"])


def test_a_saved_search_that_does_not_fit_fails_with_one_line(tiny_llama_dir, awq_runs, tmp_path):
    with pytest.raises(QfidError, match="only be replayed by awq-int4"):
        QuantConfig(scheme="rtn-int4", awq_search_from=str(awq_runs["base"]))
    with pytest.raises(QfidError, match="group size"):
        quantize_model(str(tiny_llama_dir), QuantConfig(scheme="awq-int4", group_size=16, awq_search_from=str(awq_runs["base"]),
                                                        **CALIB), tmp_path / "g")
    with pytest.raises(QfidError, match="no AWQ search artifact"):
        quantize_model(str(tiny_llama_dir), QuantConfig(scheme="awq-int4", awq_search_from=str(tiny_llama_dir), **CALIB),
                       tmp_path / "n")
    assert not (tmp_path / "g").exists() and not (tmp_path / "n").exists()


def test_other_layers_are_bit_for_bit_the_run_without_keep(awq_runs):
    base, kept = _tensors(awq_runs["base"]), _tensors(awq_runs["fp8"])
    untouched = [k for k in base if not any(k.startswith(name + ".") for name in KEPT_UNITS)]
    assert untouched and all(torch.equal(kept[k], base[k]) for k in untouched)


def test_kept_layers_hold_the_searched_weight_in_fp8_or_16_bits(tiny_llama_dir, awq_runs):
    source = load_file(tiny_llama_dir / "model.safetensors")
    artifact = load_file(awq_runs["fp8"] / "qfid" / "awq_artifact.safetensors")
    fp8, dense = _tensors(awq_runs["fp8"]), _tensors(awq_runs["bf16"])
    for name in KEPT_UNITS:
        searched = source[f"{name}.weight"].float() * _awq_scale(artifact, name)[None, :]
        if f"{name}.awq_scale" in artifact:   # also the smooth layer of the next mapping (up -> down)
            searched = searched / artifact[f"{name}.awq_scale"][:, None]
        stored = fp8[f"{name}.weight"]
        assert stored.dtype == torch.float8_e4m3fn and f"{name}.qweight" not in fp8
        restored = stored.float() * fp8[f"{name}.weight_scale"].float()
        scale = fp8[f"{name}.weight_scale"].float()
        assert ((restored - searched).abs() <= FP8_RELATIVE_STEP * searched.abs() + scale * 2 ** -9).all(), name
        assert dense[f"{name}.weight"].dtype == source[f"{name}.weight"].dtype
        assert torch.equal(dense[f"{name}.weight"], searched.to(source[f"{name}.weight"].dtype)), name


def test_quantization_config_lists_kept_layers_for_loaders(awq_runs):
    qc = json.loads((awq_runs["fp8"] / "config.json").read_text())["quantization_config"]
    targets = {g["format"]: set(g["targets"]) for g in qc["config_groups"].values()}
    assert targets["float-quantized"] == set(KEPT_UNITS) and not set(KEPT_UNITS) & targets["pack-quantized"]
    qc16 = json.loads((awq_runs["bf16"] / "config.json").read_text())["quantization_config"]
    assert len(qc16["config_groups"]) == 1 and set(KEPT_UNITS) <= set(qc16["ignore"])
    meta = json.loads((awq_runs["fp8"] / "qfid_quant.json").read_text())
    assert meta["quant_config"]["keep"] == KEPT_UNITS and meta["quant_config"]["keep_as"] == "fp8"


def test_compressed_tensors_library_decodes_the_kept_layers(awq_runs):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig

    from qfid.quant.formats import load_quantized_or_dense

    path = awq_runs["fp8"]
    library = QuantizationConfig.model_validate(json.loads((path / "config.json").read_text())["quantization_config"])
    tensors = _tensors(path)
    loaded = load_quantized_or_dense(path)
    for name in KEPT_UNITS:
        scheme = next(s for s in library.config_groups.values() if name in s.targets)
        compressor = BaseCompressor.get_value_from_registry(CompressionFormat(scheme.format).value)
        weights = {"weight": tensors[f"{name}.weight"], "weight_scale": tensors[f"{name}.weight_scale"].float()}
        expected = loaded.get_submodule(name).dequantize()
        assert torch.equal(compressor.decompress(weights, scheme)["weight"], expected), name


@pytest.mark.parametrize("run", ["fp8", "bf16"])
def test_engine_runs_the_mixed_checkpoint_like_transformers(awq_runs, run):
    from qfid.quant.formats import load_quantized_or_dense

    path = awq_runs[run]
    reference = load_quantized_or_dense(path)
    reference.generation_config.eos_token_id = None
    prompt = list(range(5, 45))
    llm = LLM(path, dtype="float32", num_kv_blocks=16)
    layers = llm.engine.model_runner.model.layers
    kept = layers[1].attention.o_proj   # bound quantized layers keep their kind's name
    assert getattr(kept, "kind", type(kept).__name__) == ("Fp8Linear" if run == "fp8" else "Linear")
    assert layers[0].attention.o_proj.kind == "Int4Linear"
    (output,) = llm.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0))
    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert output.token_ids == expected[0, len(prompt):].tolist()


def test_bad_keep_lists_fail_with_one_line(tiny_llama_dir, tiny_mixtral_dir, tmp_path):
    half = ["model.layers.0.self_attn.q_proj"]
    with pytest.raises(QfidError, match="fused by serving engines"):
        quantize_model(str(tiny_llama_dir), QuantConfig(scheme="rtn-int4", keep=half), tmp_path / "a")
    with pytest.raises(QfidError, match="no such quantizable Linear"):
        quantize_model(str(tiny_llama_dir), QuantConfig(scheme="rtn-int4", keep=["model.layers.0.mlp.nope"]), tmp_path / "b")
    with pytest.raises(QfidError, match="dense models"):
        quantize_model(str(tiny_mixtral_dir), QuantConfig(scheme="rtn-int4", keep=["model.layers.0.self_attn.o_proj"]),
                       tmp_path / "c")
    with pytest.raises(QfidError, match="need --format compressed-tensors"):
        QuantConfig(scheme="awq-int4", format="autoawq", keep=["x"])
    with pytest.raises(QfidError, match="needs an INT4 scheme"):
        QuantConfig(scheme="fp8", keep=["x"])
    assert not any(tmp_path.iterdir())


def test_autoawq_holds_layers_kept_in_16_bits_as_not_converted(tiny_llama_dir, tmp_path):
    from qfid.quant.formats import load_quantized_or_dense

    path = quantize_model(str(tiny_llama_dir), QuantConfig(scheme="rtn-int4", keep=KEPT_UNITS, keep_as="bf16"),
                          tmp_path / "awq").output_dir
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and set(KEPT_UNITS) <= set(qc["modules_to_not_convert"])
    loaded = load_quantized_or_dense(path)
    source = load_file(tiny_llama_dir / "model.safetensors")
    for name in KEPT_UNITS:   # RTN folds nothing: the source weight, as stored
        assert type(loaded.get_submodule(name)).__name__ == "Linear"
        assert torch.equal(loaded.get_submodule(name).weight, source[f"{name}.weight"].float()), name
