"""Write quantized checkpoints of an in-memory model, and load quantized checkpoints (qfid's,
or any AutoAWQ / compressed-tensors one of the same layouts) back into a transformers
CausalLM.

`qfid quantize` streams blocks and writes with quant/writer.py directly; `save_checkpoint`
is the in-memory entry to the same writer: transformers writes the dense model first
(`save_pretrained` into a scratch folder: it owns the in-memory -> checkpoint name mapping,
transformers 5 fusing MoE experts in memory but writing `block_sparse_moe.experts.E.w1`, and
drops tied weights), then the writer streams it into the final layout. All of it happens in
a temp dir renamed into place, so a failure leaves nothing behind.

Loading builds the model with transformers from the same folder with the
`quantization_config` removed (so transformers does not reach for its own AWQ integration),
then swaps each quantized nn.Linear for an Int4Linear / Fp8Linear (compressed-tensors INT4
is repacked to the AWQ layout in memory). transformers 5 holds MoE experts as fused 3-D
parameters with no Linear to swap, so quantized experts are dequantized into those
parameters: numerically the checkpoint's weights, but dense in memory — the qfid engine,
not transformers, is the fast path for quantized MoE.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from qfid.config import QuantConfig
from qfid.errors import QfidError
from qfid.models.checkpoint_source import CheckpointSource
from qfid.models.linears import WeightRef, block_weight
from qfid.models.loading import read_config, resolve_model_dir
from qfid.models.mappings import ARCHITECTURES
from qfid.quant.artifact import write_awq_artifact
from qfid.quant.checkpoint_reader import StoredLinear, decode_checkpoint
from qfid.quant.codecs import CODECS, quantization_config
from qfid.layouts.primitives import Fp8Weight, Int4Weight
from qfid.quant.schemes import SCHEMES
from qfid.quant.writer import MAX_SHARD_BYTES, CheckpointWriter, plan_of, write_side_files
from qfid.utils.fs import atomic_output_dir

QUANT_META_FILE = "qfid_quant.json"
_SCRATCH = ".dense"


# -- saving ---------------------------------------------------------------------------------

def save_checkpoint(out_dir: str | Path, model: nn.Module, tokenizer, quantized: dict[str, Int4Weight | Fp8Weight],
                    config: QuantConfig, meta: dict, overwrite: bool = False) -> Path:
    """Write an in-memory `model` with the layers in `quantized` (checkpoint names, without
    `.weight`) replaced by their packed form in `config.format`: transformers writes the
    dense model first (it owns the in-memory -> checkpoint name mapping), then the same
    writer the streamed pipeline uses rewrites it. `meta["artifact"]` (tensors, e.g. the AWQ
    search's scales and clips) goes to qfid/awq_artifact.safetensors, where no loader reads
    it as weights; the rest of `meta` to qfid_quant.json."""
    _check_kinds(quantized, config)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        scratch = tmp / _SCRATCH
        model.save_pretrained(scratch, safe_serialization=True)
        source = CheckpointSource(scratch)
        writer = CheckpointWriter(tmp, source.specs, {n: plan_of(w, config.format) for n, w in quantized.items()},
                                  max_shard_bytes=MAX_SHARD_BYTES)
        for name in source.names:
            linear = name[: -len(".weight")]
            if linear in quantized:
                writer.write_quantized(linear, quantized[linear])
            else:
                writer.write_dense(name, source.read([name])[name])
        writer.close()
        not_converted = unquantized_linears(model, source.names, quantized.keys(), config.ignore)
        write_side_files(tmp, scratch, tokenizer, quantization_config(writer.plans, not_converted))
        shutil.rmtree(scratch)
        write_meta(tmp, config, meta)
    return Path(out_dir)


def _check_kinds(quantized: dict, config: QuantConfig) -> None:
    if not quantized:
        raise QfidError("nothing to save: no layer was quantized")
    expected = CODECS[SCHEMES[config.scheme].codec].weight_type
    if config.format == "compressed-tensors":   # holds any codec's layers, several at once
        return
    wrong = sorted(name for name, w in quantized.items() if not isinstance(w, expected))
    if wrong:
        raise QfidError(f"scheme {config.scheme} saves {expected.__name__} layers, but {wrong[0]} is "
                        f"{type(quantized[wrong[0]]).__name__}")


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def unquantized_linears(model: nn.Module, stored_names: list[str], quantized, ignore: list[str]) -> list[str]:
    """Linear layers left in full precision, by checkpoint name: what vLLM must not expect
    packed tensors for. In-memory nn.Linear names cover dense models (the model may live on
    the meta device); routers that transformers 5 no longer holds as nn.Linear come from the
    arch's keep-full-precision patterns matched against the checkpoint names."""
    spec = ARCHITECTURES.get((getattr(model.config, "architectures", None) or [""])[0])
    patterns = list(ignore) + list(spec.keep_full_precision if spec else ())
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    stored = {key[: -len(".weight")] for key in stored_names if key.endswith(".weight")}
    return sorted((linears | {n for n in stored if _matches(n, patterns)}) - set(quantized))


def write_meta(out_dir: Path, config: QuantConfig, meta: dict) -> None:
    meta = dict(meta)
    artifact_tensors, artifact_rest = _split_artifact(meta.pop("artifact", None) or {})
    record = {"scheme": config.scheme, "format": config.format, "quant_config": asdict(config), **meta}
    record["versions"] = {**_versions(), **meta.get("versions", {})}
    if artifact_tensors:
        record["awq_artifact"] = {"file": write_awq_artifact(out_dir, artifact_tensors),
                                  "tensors": sorted(artifact_tensors)}
    if artifact_rest:
        record["artifact"] = artifact_rest
    (out_dir / QUANT_META_FILE).write_text(json.dumps(record, indent=2, default=_json_default) + "\n")


def _split_artifact(artifact: dict, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (nested keys joined with '.') for safetensors; everything else for JSON."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict = {}
    for key, value in artifact.items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + key] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):
            sub_tensors, sub_rest = _split_artifact(value, f"{prefix}{key}.")
            tensors.update(sub_tensors)
            if sub_rest:
                rest[key] = sub_rest
        else:
            rest[key] = value
    return tensors, rest


def _json_default(value):
    if isinstance(value, (Path, torch.dtype)):
        return str(value)
    raise TypeError(f"qfid_quant.json cannot hold a {type(value).__name__}")


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("qfid", "torch", "transformers", "safetensors", "compressed-tensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


# -- loading --------------------------------------------------------------------------------

def load_quantized_or_dense(path_or_name: str | Path, dtype: torch.dtype = torch.float32,
                            device: torch.device | str = "cpu"):
    """A transformers CausalLM in eval mode on `device`: plain for a dense checkpoint (its
    tensors loaded straight onto the device); with Int4Linear / Fp8Linear layers for an
    AutoAWQ (GEMM) or compressed-tensors one (assembled on the CPU, then moved)."""
    model_dir = resolve_model_dir(str(path_or_name))
    qc = read_config(model_dir).get("quantization_config")
    if qc is None:
        model, _ = _transformers_model(model_dir, dtype, drop_quantization=False, device=device)
        return model.eval()
    if not isinstance(qc, dict):
        raise QfidError(f"{model_dir}/config.json has a malformed quantization_config")
    stored = decode_checkpoint(model_dir, qc)
    model, missing = _transformers_model(model_dir, dtype, drop_quantization=True)
    unfilled = sorted(missing - install_quantized(model, stored))
    if unfilled:
        more = f" (and {len(unfilled) - 1} more)" if len(unfilled) > 1 else ""
        raise QfidError(f"checkpoint {model_dir} holds no value for {unfilled[0]}{more}")
    return model.to(device).eval()


def load_tokenizer(path_or_name: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(str(path_or_name)))


@contextlib.contextmanager
def _quiet_transformers():
    """The quantized layers' tensors are expected to be 'unexpected' and their dense
    weights 'missing' here; transformers' load report would only alarm the user."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _transformers_model(model_dir: Path, dtype: torch.dtype, drop_quantization: bool,
                        device: torch.device | str = "cpu"):
    """(model, names of the parameters the files did not fill)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(model_dir)
    if drop_quantization and hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    quiet = _quiet_transformers() if drop_quantization else contextlib.nullcontext()
    with quiet:
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, config=hf_config, dtype=dtype, use_safetensors=True, output_loading_info=True,
            **({} if torch.device(device).type == "cpu" else {"device_map": str(device)}))
    return model, set(info["missing_keys"])


def _weight_ref(model: nn.Module, name: str) -> WeightRef:
    """The model's weight for a checkpoint name: a Linear, or an expert's slice of a fused
    transformers-5 MoE parameter (found from the deepest module the name reaches)."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = model.get_submodule(".".join(parts[:cut]))
        except AttributeError:
            continue
        try:
            return block_weight(owner, ".".join(parts[cut:]))
        except QfidError:
            break
    raise QfidError(f"checkpoint has quantized tensors for {name} but the model has no such layer")


def install_quantized(model: nn.Module, stored: dict[str, StoredLinear]) -> set[str]:
    """Swap each quantized Linear for its quantized module; write dequantized experts into
    fused MoE parameters. Returns the in-memory parameter names now holding checkpoint
    values, so the caller can tell a fused parameter only partly covered (an expert missing
    from the files) from a complete one."""
    module_names = {id(m): n for n, m in model.named_modules()}
    filled: set[str] = set()
    expert_slices: dict[str, set] = {}
    for name, layer in stored.items():
        ref = _weight_ref(model, name)
        if ref.shape != tuple(layer.weight.shape):
            raise QfidError(f"{name}: checkpoint weight is {tuple(layer.weight.shape)} "
                            f"but the model expects {ref.shape}")
        if ref.expert is None:
            model.set_submodule(name, layer.module(ref.module.bias))
            filled.add(f"{name}.weight")
        else:
            ref.set(layer.dequantize(torch.float32))
            expert_slices.setdefault(f"{module_names[id(ref.module)]}.{ref.param}", set()).add((ref.expert, ref.half))
    for param_name, slices in expert_slices.items():
        halves = 2 if any(half is not None for _, half in slices) else 1
        if len(slices) == model.get_parameter(param_name).shape[0] * halves:
            filled.add(param_name)
    return filled
