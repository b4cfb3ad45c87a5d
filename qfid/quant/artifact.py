"""The AWQ search artifact (every smooth layer's scale, every Linear's clip values) inside a
checkpoint folder.

It lives in the folder's `qfid/` subfolder: vLLM loads every top-level `*.safetensors` file
as model weights, so a top-level artifact made it refuse the checkpoint ("no module or
parameter named ...awq_scale"). Checkpoints written before the move keep it at the top
level; `read_awq_artifact` finds either.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qfid.errors import QfidError

QFID_SUBDIR = "qfid"
AWQ_ARTIFACT = f"{QFID_SUBDIR}/awq_artifact.safetensors"
LEGACY_AWQ_ARTIFACT = "qfid_awq_artifact.safetensors"


def write_awq_artifact(checkpoint_dir: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Save the artifact's tensors; returns its path relative to the checkpoint."""
    from safetensors.torch import save_file

    path = Path(checkpoint_dir) / AWQ_ARTIFACT
    path.parent.mkdir(exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
    return AWQ_ARTIFACT


def awq_artifact_path(checkpoint_dir: Path) -> Path | None:
    for relative in (AWQ_ARTIFACT, LEGACY_AWQ_ARTIFACT):
        path = Path(checkpoint_dir) / relative
        if path.is_file():
            return path
    return None


def read_awq_artifact(checkpoint_dir: Path | str) -> dict[str, torch.Tensor]:
    """The artifact a checkpoint carries (for `awq.apply_awq_artifact`), or one clear line."""
    from safetensors.torch import load_file

    path = awq_artifact_path(Path(checkpoint_dir))
    if path is None:
        raise QfidError(f"{checkpoint_dir} has no AWQ search artifact ({AWQ_ARTIFACT}); "
                        "only AWQ checkpoints written by qfid carry one")
    return load_file(path)
