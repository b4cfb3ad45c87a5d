"""Resolve what the user typed (default-model name, local folder, GGUF file, hub id) to a
local safetensors folder, and load it as a transformers CausalLM.

Safe by default: only safetensors weights are read (never pickles) and
`trust_remote_code` stays off unless the caller asks for it.
"""
from __future__ import annotations

import json
from pathlib import Path

from qfid.errors import QfidError
from qfid.models.default import DEFAULT_MODELS, ensure_default_model
from qfid.models.mappings import ArchSpec, arch_spec
from qfid.paths import cache_dir


def resolve_model_dir(name_or_path: str) -> Path:
    """A local folder holding config.json and safetensors weights."""
    if name_or_path in DEFAULT_MODELS:
        return ensure_default_model(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from qfid.models.gguf import convert_gguf_to_safetensors

        target = cache_dir() / "models" / f"gguf-{path.stem}"
        return target if (target / "config.json").is_file() else convert_gguf_to_safetensors(path, target)
    if path.is_dir():
        return _checked_dir(path)
    if _looks_like_hub_id(name_or_path):
        return _download_from_hub(name_or_path)
    known = ", ".join(DEFAULT_MODELS)
    raise QfidError(f"model not found: {name_or_path} (not a folder, a .gguf file, or a default model: {known})")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _download_from_hub(repo_id: str) -> Path:
    """Real hub loading for users with internet; safetensors, configs and tokenizer only."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # network, auth, missing repo: one line for the user
        raise QfidError(f"could not download {repo_id} from the Hugging Face hub: {type(exc).__name__}: {exc}") from None
    return _checked_dir(Path(folder))


def _checked_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise QfidError(f"{path} has no config.json: not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        raise QfidError(f"{path} has no .safetensors weights (qfid does not load pickled .bin checkpoints)")
    return path


def read_config(model_dir: Path) -> dict:
    with open(model_dir / "config.json", encoding="utf-8") as f:
        return json.load(f)


def model_arch(config: dict) -> ArchSpec:
    architectures = config.get("architectures") or [None]
    return arch_spec(architectures[0])


def quantization_method(config: dict) -> str | None:
    qc = config.get("quantization_config")
    return qc.get("quant_method") if isinstance(qc, dict) else None


def check_quantizable(model_dir: Path) -> tuple[dict, ArchSpec]:
    """Config and arch spec of a dense model, or a one-line error saying why not."""
    config = read_config(model_dir)
    method = quantization_method(config)
    if method is not None:
        raise QfidError(f"{model_dir} is already quantized ({method}); quantize the full-precision model instead")
    return config, model_arch(config)


def load_dense_model(model_dir: Path, dtype=None, trust_remote_code: bool = False, device="cpu"):
    """(model, tokenizer) for a full-precision folder, in eval mode, its weights loaded
    straight onto `device`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_cpu = torch.device(device).type == "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=dtype or torch.float32,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        **({} if on_cpu else {"device_map": str(device)}),
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    return model, tokenizer
