"""The `quantization_config` entry of config.json, written and read back.

Written without importing compressed-tensors (a test extra, not a dependency): the dicts
below are exactly what compressed-tensors 0.20's `ModelCompressor.update_config` writes for
the same schemes (tests/tiny/test_formats.py builds them with the library and compares),
and what AutoAWQ writes for GEMM checkpoints. vLLM and transformers select their loaders
from these fields.
"""
from __future__ import annotations

from importlib import metadata

from qfid.errors import QfidError

CT_METHOD = "compressed-tensors"
# The release whose layout qfid writes, recorded when the library is not installed (the
# lock's version; the layout has not changed across 0.20.x).
CT_KNOWN_GOOD_VERSION = "0.20.1"
CT_PACK_QUANTIZED = "pack-quantized"
CT_FLOAT_QUANTIZED = "float-quantized"
CT_MIXED = "mixed-precision"
CT_TARGETS = ["Linear"]


def awq_config(group_size: int, not_converted: list[str]) -> dict:
    return {
        "quant_method": "awq",
        "bits": 4,
        "group_size": group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": not_converted,
    }


def _args(num_bits: int, kind: str, strategy: str, symmetric: bool, dynamic: bool,
          group_size: int | None = None) -> dict:
    """One QuantizationArgs as compressed-tensors serializes it."""
    return {"dynamic": dynamic, "group_size": group_size, "num_bits": num_bits,
            "strategy": strategy, "symmetric": symmetric, "type": kind}


def ct_int4_group(group_size: int, targets: list[str] | None = None) -> dict:
    """W4A16, asymmetric, group-wise: llm-compressor's `W4A16_ASYM` with our group size."""
    weights = _args(4, "int", "group", symmetric=False, dynamic=False, group_size=group_size)
    return _ct_group(CT_PACK_QUANTIZED, weights, None, targets)


def ct_fp8_group(per_channel: bool, static_activations: bool, targets: list[str] | None = None) -> dict:
    """FP8 weights (per channel or per tensor) with FP8 activations: static per-tensor
    (`input_scale` in the checkpoint) or dynamic per-token."""
    weights = _args(8, "float", "channel" if per_channel else "tensor", symmetric=True, dynamic=False)
    if static_activations:
        acts = _args(8, "float", "tensor", symmetric=True, dynamic=False)
    else:
        acts = _args(8, "float", "token", symmetric=True, dynamic=True)
    return _ct_group(CT_FLOAT_QUANTIZED, weights, acts, targets)


def ct_int4_config(group_size: int, ignore: list[str]) -> dict:
    return ct_config([ct_int4_group(group_size)], ignore)


def ct_fp8_config(per_channel: bool, static_activations: bool, ignore: list[str]) -> dict:
    return ct_config([ct_fp8_group(per_channel, static_activations)], ignore)


def _ct_group(fmt: str, weights: dict, input_activations: dict | None, targets: list[str] | None) -> dict:
    """One config group; `targets` None means every Linear (one scheme for the model),
    else the exact module names it covers (several schemes in one checkpoint)."""
    return {"format": fmt, "input_activations": input_activations, "output_activations": None,
            "targets": list(CT_TARGETS) if targets is None else list(targets), "weights": weights}


def ct_config(groups: list[dict], ignore: list[str]) -> dict:
    """The whole compressed-tensors entry: one group per scheme; a checkpoint whose groups
    use different formats is "mixed-precision", as the library marks it."""
    formats = {g["format"] for g in groups}
    return {
        "config_groups": {f"group_{i}": g for i, g in enumerate(groups)},
        "format": formats.pop() if len(formats) == 1 else CT_MIXED,
        "global_compression_ratio": None,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "moe_sparsity_config": None,
        "quant_method": CT_METHOD,
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": ct_version(),
    }


def ct_version() -> str:
    """The `version` field: the installed compressed-tensors release, as the library itself
    writes it, else the known-good release qfid's layout follows."""
    try:
        return metadata.version("compressed-tensors")
    except metadata.PackageNotFoundError:
        return CT_KNOWN_GOOD_VERSION


# -- reading other tools' configs -----------------------------------------------------------

def awq_group_size(qc: dict) -> int | None:
    """Group size of an AutoAWQ GEMM config (None: per channel), or a one-line error for
    the AWQ variants qfid cannot read."""
    bits = qc.get("bits", qc.get("w_bit", 4))
    version = str(qc.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm" or not qc.get("zero_point", True):
        raise QfidError(f"unsupported AWQ checkpoint (bits={bits}, version={version}, "
                        f"zero_point={qc.get('zero_point')}); qfid reads 4-bit GEMM with zero points")
    group_size = qc.get("group_size", qc.get("q_group_size", 128))
    return None if group_size in (None, -1, 0) else int(group_size)


def ct_weight_schemes(qc: dict) -> list[dict]:
    """The config groups of a compressed-tensors config, each a dict with `weights` and
    `input_activations`."""
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise QfidError("compressed-tensors quantization_config has no config_groups")
    return [g for g in groups.values() if isinstance(g, dict) and g.get("weights")]


def ct_int4_group_sizes(qc: dict) -> set[int | None]:
    """Group sizes of the 4-bit int schemes (None for per-channel)."""
    sizes: set[int | None] = set()
    for scheme in ct_weight_schemes(qc):
        w = scheme["weights"]
        if w.get("type") == "int" and w.get("num_bits") == 4:
            sizes.add(w.get("group_size") if w.get("strategy") in ("group", "tensor_group") else None)
    return sizes


def ct_fp8_activations(qc: dict) -> str:
    """"static", "dynamic" or "none" for the FP8 schemes of a config; one mode per model."""
    modes = set()
    for scheme in ct_weight_schemes(qc):
        if scheme["weights"].get("type") != "float":
            continue
        acts = scheme.get("input_activations")
        modes.add("none" if not acts else "dynamic" if acts.get("dynamic") else "static")
    if len(modes) > 1:
        raise QfidError(f"compressed-tensors checkpoint mixes FP8 activation modes {sorted(modes)}; qfid loads one")
    return modes.pop() if modes else "none"
