"""The folder a quantization run writes into before it is renamed into place, kept across an
interruption so the same command resumes at the next unfinished block.

A 70B takes hours; losing them to a dropped SSH session is not acceptable. The folder is
`.NAME.partial` beside the output (hidden, never a loadable checkpoint); `qfid_resume.json`
records the run's fingerprint (source files, configuration, qfid version) and the blocks
done, `resume/` the activations flowing into the next block and each finished block's
artifact tensors. A run with other arguments starts over; a finished run removes the
journal, follows the umask and renames the folder to the output.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from qfid.errors import QfidError
from qfid.utils.fs import atomic_write_text, follow_umask

JOURNAL = "qfid_resume.json"
RESUME_DIR = "resume"


class PartialCheckpoint:
    def __init__(self, target: Path, fingerprint: dict, overwrite: bool):
        self.target = Path(target)
        if self.target.exists() and not overwrite:
            raise QfidError(f"output directory {self.target} already exists (pass --overwrite to replace it)")
        self.path = self.target.parent / f".{self.target.name}.partial"
        self.fingerprint = fingerprint
        self.state = self._open()

    def _open(self) -> dict:
        journal = self.path / JOURNAL
        if journal.is_file():
            state = json.loads(journal.read_text())
            if state.get("fingerprint") == self.fingerprint:
                return state
            shutil.rmtree(self.path)   # another run's leftovers: different arguments or source
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / RESUME_DIR).mkdir(exist_ok=True)
        return {"fingerprint": self.fingerprint, "blocks_done": 0, "outside_written": False, "notes": {}}

    @property
    def resuming(self) -> bool:
        return self.state["blocks_done"] > 0 or self.state["outside_written"]

    def save(self) -> None:
        atomic_write_text(self.path / JOURNAL, json.dumps(self.state, indent=1))

    # -- per-block state -----------------------------------------------------------------

    def save_tensors(self, stem: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tmp = self.path / RESUME_DIR / f".{stem}.tmp"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, self.path / RESUME_DIR / f"{stem}.safetensors")

    def load_tensors(self, stem: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.path / RESUME_DIR / f"{stem}.safetensors"
        return load_file(path) if path.is_file() else {}

    def block_done(self, i: int, notes: dict) -> None:
        self.state["blocks_done"] = i + 1
        self.state["notes"].update(notes)
        self.save()

    # -- the end ---------------------------------------------------------------------------

    def finish(self) -> Path:
        shutil.rmtree(self.path / RESUME_DIR, ignore_errors=True)
        (self.path / JOURNAL).unlink(missing_ok=True)
        follow_umask(self.path)
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.rename(self.target, old)
            os.rename(self.path, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, self.target)
        return self.target

    def abandon(self) -> None:
        """A failure before any block finished: nothing worth resuming."""
        shutil.rmtree(self.path, ignore_errors=True)
