"""Save the tiny Llama / Mixtral quantized with the reference primitives in each layout, and
check (a) qfid's loader gives back exactly the primitives' dequantized weights and the
logits of a dense model holding them, (b) the compressed-tensors library decodes the same
weights from the files, (c) the quantization_config is what the library itself writes,
(d) a failed save leaves nothing behind."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qfid.config import QuantConfig
from qfid.errors import QfidError
from qfid.models.linears import block_weight, model_linears
from qfid.models.loading import load_dense_model, model_arch, read_config
from qfid.quant import formats
from qfid.quant.artifact import read_awq_artifact
from qfid.quant.formats import load_quantized_or_dense, save_checkpoint
from qfid.quant.linear import Fp8Linear, Int4Linear
from qfid.layouts.packing import as_stored
from qfid.layouts.primitives import Int4Weight, fp8_fake_quantize_activation, fp8_quantize, int4_quantize

pytestmark = pytest.mark.usefixtures("reference_kernels")  # exact decoding: the torch reference path

GROUP = 64
IDS = torch.tensor([[3, 17, 42, 99, 7, 250, 11, 64]])


@dataclass(frozen=True)
class Case:
    family: str
    scheme: str
    format: str
    per_channel: bool = True
    static: bool = False


CASES = {
    "llama-awq": Case("llama", "rtn-int4", "autoawq"),
    "llama-ct-int4": Case("llama", "rtn-int4", "compressed-tensors"),
    "llama-fp8-channel-dynamic": Case("llama", "fp8", "compressed-tensors"),
    "llama-fp8-tensor-static": Case("llama", "fp8", "compressed-tensors", per_channel=False, static=True),
    "mixtral-awq": Case("mixtral", "rtn-int4", "autoawq"),
    "mixtral-ct-int4": Case("mixtral", "rtn-int4", "compressed-tensors"),
    "mixtral-fp8-channel-dynamic": Case("mixtral", "fp8", "compressed-tensors"),
}
CT_CASES = [k for k, c in CASES.items() if c.format == "compressed-tensors"]


@dataclass
class Saved:
    case: Case
    source: Path
    path: Path
    quantized: dict
    _loaded: object = None

    def loaded(self):
        """qfid's reload of the checkpoint, shared by the tests that only read it."""
        if self._loaded is None:
            self._loaded = load_quantized_or_dense(self.path)
        return self._loaded

    def expected(self, name: str) -> torch.Tensor:
        """What the checkpoint must decode to: the primitives' dequant of what was stored."""
        w = self.quantized[name]
        return as_stored(w).dequantize() if isinstance(w, Int4Weight) else w.dequantize()


def quantize_reference(model, spec, case: Case) -> dict:
    """RTN INT4 or FP8 straight from the primitives, over every mapped Linear."""
    refs = model_linears(model, spec)
    if case.scheme == "rtn-int4":
        return {name: int4_quantize(ref.get(), GROUP) for name, ref in refs.items()}
    quantized = {}
    for i, (name, ref) in enumerate(refs.items()):
        quantized[name] = fp8_quantize(ref.get(), case.per_channel)
        if case.static:
            quantized[name].input_scale = torch.tensor([0.02 * (1 + i % 4)])
    return quantized


def quant_config(case: Case) -> QuantConfig:
    acts = "static" if case.static else "dynamic"
    weights = "channel" if case.per_channel else "tensor"
    return QuantConfig(scheme=case.scheme, format=case.format, group_size=GROUP if case.scheme != "fp8" else None,
                       fp8_weights=weights, fp8_activations=acts)


@pytest.fixture(scope="module")
def checkpoints(tiny_llama_dir, tiny_mixtral_dir, tmp_path_factory):
    sources = {"llama": tiny_llama_dir, "mixtral": tiny_mixtral_dir}
    root = tmp_path_factory.mktemp("formats")
    cache: dict[str, Saved] = {}

    def get(key: str) -> Saved:
        if key not in cache:
            case = CASES[key]
            model, tokenizer = load_dense_model(sources[case.family])
            quantized = quantize_reference(model, model_arch(read_config(sources[case.family])), case)
            meta = {"note": key, "artifact": {"scales": {"layer0": torch.arange(4.0)}, "grid": 20}}
            path = save_checkpoint(root / key, model, tokenizer, quantized, quant_config(case), meta)
            cache[key] = Saved(case, sources[case.family], path, quantized)
        return cache[key]

    return get


def loaded_weight(model, name: str) -> torch.Tensor:
    """Dense weight of a layer in a model qfid loaded: a quantized module's dequant, or an
    expert's slice of a fused MoE parameter."""
    try:
        return model.get_submodule(name).dequantize()
    except AttributeError:
        block, rel = re.match(r"(model\.layers\.\d+)\.(.+)", name).groups()
        return block_weight(model.get_submodule(block), rel).get()


def dense_reference(saved: Saved):
    """The source model holding the dequantized weights, with FP8 activation rounding hooked
    onto exactly the layers that Fp8Linear replaces (experts are dequantized, not swapped)."""
    model, _ = load_dense_model(saved.source)
    refs = model_linears(model, model_arch(read_config(saved.source)))
    for name, w in saved.quantized.items():
        refs[name].set(saved.expected(name))
        if saved.case.scheme == "fp8" and refs[name].expert is None:
            scale = w.input_scale
            refs[name].module.register_forward_pre_hook(
                lambda _m, args, scale=scale: (fp8_fake_quantize_activation(args[0], scale),))
    return model


def checkpoint_modules(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(path / "model.safetensors").items():
        prefix, _, leaf = key.rpartition(".")
        modules.setdefault(prefix, {})[leaf] = tensor
    return modules


# -- (a) qfid's own loader ------------------------------------------------------------------

@pytest.mark.parametrize("key", list(CASES))
def test_reload_gives_the_primitives_weights_and_logits(checkpoints, key):
    saved = checkpoints(key)
    model = saved.loaded()
    swapped = Int4Linear if saved.case.scheme == "rtn-int4" else Fp8Linear
    for name in saved.quantized:
        assert torch.equal(loaded_weight(model, name), saved.expected(name)), name
        if "experts" not in name:
            assert isinstance(model.get_submodule(name), swapped)
    with torch.no_grad():
        logits = model(IDS).logits
        expected = dense_reference(saved)(IDS).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    out = model.generate(IDS, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, IDS.shape[1] + 3)


def test_tied_embeddings_stay_tied(tiny_llama_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(tiny_llama_dir)
    hf_config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config).eval()
    spec = model_arch(read_config(tiny_llama_dir))
    quantized = quantize_reference(model, spec, CASES["llama-awq"])
    path = save_checkpoint(tmp_path / "tied", model, None, quantized, quant_config(CASES["llama-awq"]), {})
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    loaded = load_quantized_or_dense(path)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(loaded.lm_head.weight, model.model.embed_tokens.weight)


# -- (b) the compressed-tensors library as the independent decoder ---------------------------

def _library_decompress(qc_dict: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig

    scheme = QuantizationConfig.model_validate(qc_dict).config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(CompressionFormat(scheme.format).value)
    return compressor.decompress(tensors, scheme)["weight"]


@pytest.mark.parametrize("key", CT_CASES)
def test_compressed_tensors_library_decodes_the_same_weights(checkpoints, key):
    pytest.importorskip("compressed_tensors")
    saved = checkpoints(key)
    qc = read_config(saved.path)["quantization_config"]
    modules = checkpoint_modules(saved.path)
    ours = saved.loaded()
    for name in saved.quantized:
        tensors = modules[name]
        mine = loaded_weight(ours, name)
        as_stored_dtype = _library_decompress(qc, tensors)
        assert torch.equal(as_stored_dtype, mine.to(as_stored_dtype.dtype)), name
        in_fp32 = _library_decompress(qc, {**tensors, "weight_scale": tensors["weight_scale"].float()})
        assert in_fp32.dtype == torch.float32 and torch.equal(in_fp32, mine), name


@pytest.mark.parametrize("key", ["llama-fp8-channel-dynamic", "llama-fp8-tensor-static"])
def test_transformers_with_compressed_tensors_loads_the_fp8_checkpoint(checkpoints, key):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    saved = checkpoints(key)
    theirs = AutoModelForCausalLM.from_pretrained(saved.path, dtype=torch.float32)
    with torch.no_grad():
        theirs(IDS)  # compressed-tensors decompresses on the first forward
    ours = saved.loaded()
    for name in saved.quantized:
        assert torch.equal(theirs.get_submodule(name).weight, loaded_weight(ours, name)), name
        if saved.case.static:
            assert torch.equal(theirs.get_submodule(name).input_scale, ours.get_submodule(name).input_scale)


def _library_w4a16_checkpoint(saved: Saved, out: Path) -> Path:
    """The same asymmetric group W4A16 written by compressed-tensors itself: its own
    quantization lifecycle and `ModelCompressor.compress_model`, fed qfid's scales and zero
    points and weights that sit exactly on the grid, so both checkpoints hold the same codes."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(saved.source, dtype=torch.float32)
    weights = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=GROUP, symmetric=False,
                               dynamic=False)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, format="pack-quantized")
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"],
                                                        quantization_status="initialized"))
    for name, w in saved.quantized.items():
        module = model.get_submodule(name)
        module.weight_scale = torch.nn.Parameter(w.scales.half(), requires_grad=False)
        module.weight_zero_point.data.copy_(w.zeros.to(torch.int16) - 8)   # the library's signed zero
        module.weight.data.copy_(saved.expected(name))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    return out


def _names_shapes_dtypes(path: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def test_library_written_w4a16_has_qfids_layout_and_logits(checkpoints, tmp_path):
    """qfid's compressed-tensors W4A16 equals the library's own: same tensor names, shapes
    and dtypes, same logits through both load paths the README documents (transformers
    with `CompressedTensorsConfig(dequantize=True)`, and qfid.load). transformers' default
    load (run_compressed) refuses the library's own checkpoint too: the packed zero point
    ([out/8, groups]) does not fit the module it builds ([out, groups]), an upstream
    limitation in transformers 5.25 with compressed-tensors 0.20.1."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    saved = checkpoints("llama-ct-int4")
    theirs = _library_w4a16_checkpoint(saved, tmp_path / "library")
    assert _names_shapes_dtypes(theirs) == _names_shapes_dtypes(saved.path)
    with torch.no_grad():
        via_transformers = [AutoModelForCausalLM.from_pretrained(p, quantization_config=CompressedTensorsConfig(
            dequantize=True))(IDS).logits for p in (theirs, saved.path)]
        via_qfid = [load_quantized_or_dense(p)(IDS).logits for p in (theirs, saved.path)]
    assert torch.equal(*via_transformers) and torch.equal(*via_qfid)
    torch.testing.assert_close(via_transformers[1], via_qfid[1], atol=2e-3, rtol=0)  # fp16 vs fp32 dequant


# -- (c) config.json and qfid_quant.json -----------------------------------------------------

def _library_quantization_config(case: Case, ignore: list[str]) -> dict:
    """What compressed-tensors' ModelCompressor.update_config writes for this scheme."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    if case.scheme == "fp8":
        fmt = "float-quantized"
        weights = QuantizationArgs(num_bits=8, type="float", strategy="channel" if case.per_channel else "tensor",
                                   symmetric=True, dynamic=False)
        acts = QuantizationArgs(num_bits=8, type="float", strategy="tensor" if case.static else "token",
                                symmetric=True, dynamic=not case.static)
    else:
        fmt = "pack-quantized"
        weights = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=GROUP,
                                   symmetric=False, dynamic=False)
        acts = None
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts, format=fmt)
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt, ignore=ignore,
                            quantization_status="compressed")
    written = {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors",
               "sparsity_config": {}, "transform_config": {}, **qc.model_dump(exclude=["quant_method"])}
    return json.loads(json.dumps(written))


def _expected_ignore(family: str) -> list[str]:
    if family == "llama":
        return ["lm_head"]
    return ["lm_head", "model.layers.0.block_sparse_moe.gate", "model.layers.1.block_sparse_moe.gate"]


@pytest.mark.parametrize("key", ["llama-awq", "mixtral-awq"])
def test_autoawq_quantization_config(checkpoints, key):
    saved = checkpoints(key)
    assert read_config(saved.path)["quantization_config"] == {
        "quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": _expected_ignore(saved.case.family),
    }


@pytest.mark.parametrize("key", CT_CASES)
def test_compressed_tensors_config_is_what_the_library_writes(checkpoints, key):
    """Everything but `version`, which is the installed release's (as the library writes
    it): a newer compressed-tensors must not fail this test, only a changed layout."""
    pytest.importorskip("compressed_tensors")
    saved = checkpoints(key)
    expected = _library_quantization_config(saved.case, _expected_ignore(saved.case.family))
    written = dict(read_config(saved.path)["quantization_config"])
    assert re.fullmatch(r"\d+\.\d+\.\d+([.+-]?\w+)*", written.pop("version"))
    expected.pop("version")
    assert written == expected


def test_compressed_tensors_version_without_the_library(monkeypatch):
    from importlib import metadata

    from qfid.quant import hf_quant_config

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(hf_quant_config.metadata, "version", absent)
    assert hf_quant_config.ct_int4_config(64, [])["version"] == hf_quant_config.CT_KNOWN_GOOD_VERSION


def test_quant_metadata_and_artifact(checkpoints):
    saved = checkpoints("llama-awq")
    record = json.loads((saved.path / formats.QUANT_META_FILE).read_text())
    assert record["scheme"] == "rtn-int4" and record["format"] == "autoawq" and record["note"] == "llama-awq"
    assert record["quant_config"]["group_size"] == GROUP
    assert {"torch", "transformers", "safetensors"} <= record["versions"].keys()
    assert record["artifact"] == {"grid": 20}
    assert record["awq_artifact"] == {"file": "qfid/awq_artifact.safetensors", "tensors": ["scales.layer0"]}
    artifact = read_awq_artifact(saved.path)
    assert torch.equal(artifact["scales.layer0"], torch.arange(4.0))
    assert not list(saved.path.glob("qfid_*.safetensors"))
    for name in ("tokenizer.json", "generation_config.json"):
        assert (saved.path / name).is_file()
    assert not (saved.path / ".dense").exists()


# -- (d) failures -----------------------------------------------------------------------------

def _tiny_inputs(tiny_llama_dir):
    model, tokenizer = load_dense_model(tiny_llama_dir)
    case = CASES["llama-awq"]
    quantized = quantize_reference(model, model_arch(read_config(tiny_llama_dir)), case)
    return model, tokenizer, quantized, quant_config(case)


def test_failed_save_leaves_nothing_behind(tiny_llama_dir, tmp_path, monkeypatch):
    model, tokenizer, quantized, config = _tiny_inputs(tiny_llama_dir)

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(formats, "write_side_files", crash)
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(parent / "ckpt", model, tokenizer, quantized, config, {})
    assert list(parent.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_llama_dir, tmp_path):
    model, tokenizer, quantized, config = _tiny_inputs(tiny_llama_dir)
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(QfidError, match="already exists"):
        save_checkpoint(target, model, tokenizer, quantized, config, {})
    assert (target / "keep.txt").read_text() == "mine"
    save_checkpoint(target, model, tokenizer, quantized, config, {}, overwrite=True)
    assert not (target / "keep.txt").exists() and "quantization_config" in read_config(target)


def test_save_rejects_names_and_kinds_that_do_not_fit(tiny_llama_dir, tmp_path):
    model, tokenizer, quantized, config = _tiny_inputs(tiny_llama_dir)
    misnamed = {f"{name}.typo": w for name, w in quantized.items()}
    with pytest.raises(QfidError, match="no dense weight"):
        save_checkpoint(tmp_path / "a", model, tokenizer, misnamed, config, {})
    name = next(iter(quantized))
    wrong_kind = {**quantized, name: fp8_quantize(torch.randn(4, 4))}
    with pytest.raises(QfidError, match="saves Int4Weight"):
        save_checkpoint(tmp_path / "b", model, tokenizer, wrong_kind, config, {})
    assert list(tmp_path.iterdir()) == []


def _broken_copy(saved: Saved, tmp_path: Path, edit) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(saved.path, broken)
    tensors = load_file(broken / "model.safetensors")
    edit(tensors)
    save_file(tensors, broken / "model.safetensors")
    return broken


def test_load_errors_are_one_line(checkpoints, tmp_path):
    saved = checkpoints("llama-awq")
    layer = next(iter(saved.quantized))
    missing = _broken_copy(saved, tmp_path / "m", lambda t: t.pop(f"{layer}.qzeros"))
    with pytest.raises(QfidError, match=rf"missing {re.escape(layer)}\.qzeros"):
        load_quantized_or_dense(missing)
    def truncate_scales(tensors):
        tensors[f"{layer}.scales"] = tensors[f"{layer}.scales"][:, :8].contiguous()

    bad = _broken_copy(saved, tmp_path / "s", truncate_scales)
    with pytest.raises(QfidError, match="scales has shape"):
        load_quantized_or_dense(bad)
    unknown = tmp_path / "unknown"
    shutil.copytree(saved.path, unknown)
    hf_config = read_config(unknown)
    hf_config["quantization_config"]["quant_method"] = "gptq"
    (unknown / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(QfidError, match="unknown quantization method 'gptq'"):
        load_quantized_or_dense(unknown)


def test_dense_checkpoint_loads_plainly(tiny_llama_dir):
    model = load_quantized_or_dense(tiny_llama_dir)
    assert not model.training
    assert not any(isinstance(m, (Int4Linear, Fp8Linear)) for m in model.modules())


def test_missing_expert_or_dense_tensor_is_an_error(checkpoints, tmp_path):
    """A fused MoE parameter or a dense weight the files leave unfilled would silently keep
    transformers' random init; the loader refuses instead."""
    moe = checkpoints("mixtral-awq")
    expert = "model.layers.1.block_sparse_moe.experts.2.w3"
    def drop_expert(tensors):
        for leaf in ("qweight", "qzeros", "scales"):
            del tensors[f"{expert}.{leaf}"]

    no_expert = _broken_copy(moe, tmp_path / "e", drop_expert)
    with pytest.raises(QfidError, match=r"no value for model\.layers\.1\.mlp\.experts\.gate_up_proj"):
        load_quantized_or_dense(no_expert)
    no_norm = _broken_copy(checkpoints("llama-ct-int4"), tmp_path / "n", lambda t: t.pop("model.norm.weight"))
    with pytest.raises(QfidError, match=r"no value for model\.norm\.weight"):
        load_quantized_or_dense(no_norm)


def test_sharded_checkpoint_round_trips(checkpoints, tiny_llama_dir, tmp_path, monkeypatch):
    saved = checkpoints("llama-awq")
    model, tokenizer = load_dense_model(tiny_llama_dir)
    monkeypatch.setattr(formats, "MAX_SHARD_BYTES", 300_000)
    path = save_checkpoint(tmp_path / "sharded", model, tokenizer, saved.quantized, quant_config(saved.case), {})
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (path / "model.safetensors").exists()
    with torch.no_grad():
        sharded_logits = load_quantized_or_dense(path)(IDS).logits
        assert torch.equal(sharded_logits, saved.loaded()(IDS).logits)


def test_mixed_scheme_checkpoint_round_trips(tiny_llama_dir, tmp_path):
    """Sensitive layers kept in FP8 inside an INT4 model (the sweep's `+keep:N`): one
    compressed-tensors group per scheme, targeting its layers by name. qfid's loader and
    the compressed-tensors library both decode every layer to the primitives' weights."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig

    model, tokenizer = load_dense_model(tiny_llama_dir)
    refs = model_linears(model, model_arch(read_config(tiny_llama_dir)))
    kept = {name for name in refs if name.endswith(("mlp.down_proj", "self_attn.o_proj")) and ".layers.1." in name}
    quantized = {name: fp8_quantize(ref.get()) if name in kept else int4_quantize(ref.get(), GROUP)
                 for name, ref in refs.items()}
    path = save_checkpoint(tmp_path / "mixed", model, tokenizer, quantized,
                           QuantConfig(scheme="rtn-int4", format="compressed-tensors", group_size=GROUP), {})
    qc = read_config(path)["quantization_config"]
    assert qc["format"] == "mixed-precision" and len(qc["config_groups"]) == 2
    targets = {g["format"]: set(g["targets"]) for g in qc["config_groups"].values()}
    assert targets == {"float-quantized": kept, "pack-quantized": set(refs) - kept}
    loaded = load_quantized_or_dense(path)
    library = QuantizationConfig.model_validate(qc)
    modules = checkpoint_modules(path)
    for name, w in quantized.items():
        expected = as_stored(w).dequantize() if isinstance(w, Int4Weight) else w.dequantize()
        assert torch.equal(loaded_weight(loaded, name), expected), name
        scheme = next(s for s in library.config_groups.values() if name in s.targets)
        compressor = BaseCompressor.get_value_from_registry(CompressionFormat(scheme.format).value)
        tensors = {**modules[name], "weight_scale": modules[name]["weight_scale"].float()}
        assert torch.equal(compressor.decompress(tensors, scheme)["weight"], expected), name
    with pytest.raises(QfidError, match="saves Int4Weight layers"):   # AutoAWQ holds INT4 only
        save_checkpoint(tmp_path / "awq-mixed", model, tokenizer, quantized,
                        QuantConfig(scheme="rtn-int4", format="autoawq", group_size=GROUP), {})


def test_autoawq_refuses_two_int4_schemes():
    from qfid.quant.codecs import LinearPlan, quantization_config

    plans = {"a": LinearPlan("int4", "autoawq", group_size=64), "b": LinearPlan("int4", "autoawq", group_size=32)}
    with pytest.raises(QfidError, match="AutoAWQ format holds one INT4 scheme"):
        quantization_config(plans, [])
