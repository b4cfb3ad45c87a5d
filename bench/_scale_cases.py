"""The runs bench/quantize_scale.py measures: synthetic source checkpoints, the pre-change
code's worktree, and one `qfid quantize` per (model, layers, scheme, code) in a fresh process.

Both codes run from the same venv python with `PYTHONPATH` set to their source tree; the
launcher prints where `qfid` was imported from and refuses to run when it is not that tree
(an editable install or the working directory could otherwise shadow it, and the "old"
figures would silently be the new code's).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from _measure import measure

REPO = Path(__file__).resolve().parents[1]
PRECHANGE_COMMIT = "d684acd"
PRECHANGE_DIR = Path("/tmp/qfid-prechange")
WRITE_TIMEOUT_S = 2 * 3600   # 16 GB of random bf16 at 2 cores and disk speed: well under this
SCHEME_ARGS = {
    "rtn": ["--scheme", "rtn-int4"],
    "fp8": ["--scheme", "fp8"],
    "fp8-static": ["--scheme", "fp8", "--activations", "static"],
    "awq": ["--scheme", "awq-int4"],
}
LAUNCHER = """\
import os, sys
import qfid
root = os.path.realpath(os.environ["QFID_BENCH_ROOT"])
print("qfid imported from", qfid.__file__, file=sys.stderr, flush=True)
if not os.path.realpath(qfid.__file__).startswith(root + os.sep):
    sys.exit(f"qfid imported from {qfid.__file__}, not from {root}")
from qfid.cli.app import main
sys.argv = ["qfid", *sys.argv[1:]]
main()
"""
WRITER = """\
import json, sys
from qfid.testing.synthetic import write_synthetic_llama
write_synthetic_llama(sys.argv[1], **json.loads(sys.argv[2]))
"""


@dataclass(frozen=True)
class Shape:
    """A Llama's widths (default: Llama-3-8B's)."""
    hidden: int = 4096
    intermediate: int = 14336
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 128256

    @property
    def label(self) -> str:
        if self == Shape():
            return "8B-shape"
        return f"h{self.hidden}-i{self.intermediate}-a{self.heads}-kv{self.kv_heads}-v{self.vocab}"


@dataclass(frozen=True)
class Case:
    model: str        # the label in the table
    source: str       # what `qfid quantize` is given: a folder or a default model's name
    layers: int | None  # None: read from the written checkpoint's config
    scheme: str
    code: str         # "new" (this tree) or "old" (the pre-change worktree)

    @property
    def name(self) -> str:
        return f"{self.code}-{self.scheme}-{self.model}-L{self.layers or 'all'}"


def child_env(root: Path) -> dict[str, str]:
    """The environment a measured child runs in: `qfid` from `root`, tracebacks in the log."""
    return dict(os.environ, PYTHONPATH=str(root), QFID_BENCH_ROOT=str(root), QFID_DEBUG="1",
                TOKENIZERS_PARALLELISM="false")


def tree_state(root: Path) -> dict:
    """The commit a code root is at and whether its tracked files differ from it (the new
    code is this working tree, which may hold uncommitted work)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    return {"root": str(root), "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}


def code_root(code: str) -> Path:
    return REPO if code == "new" else ensure_prechange_worktree()


def ensure_prechange_worktree() -> Path:
    """A detached worktree of the pre-change commit (created once, never modified)."""
    if not (PRECHANGE_DIR / "qfid" / "__init__.py").is_file():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(PRECHANGE_DIR), PRECHANGE_COMMIT],
                       check=True, capture_output=True)
    head = subprocess.run(["git", "-C", str(PRECHANGE_DIR), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    if not head.startswith(PRECHANGE_COMMIT):
        raise SystemExit(f"{PRECHANGE_DIR} is at {head[:12]}, not {PRECHANGE_COMMIT}: move it away and rerun")
    return PRECHANGE_DIR


class CheckpointError(RuntimeError):
    """A synthetic checkpoint could not be written (its runs are recorded as failed)."""


def ensure_checkpoint(work: Path, shape: Shape, layers: int, timeout_s: float = WRITE_TIMEOUT_S) -> tuple[Path, dict]:
    """The synthetic checkpoint for (shape, layers), written in a child process unless a
    complete one is already there (a folder appears only once fully written)."""
    folder = work / "sources" / f"{shape.label}-L{layers}"
    record = {"path": str(folder), "layers": layers, "reused": folder.is_dir()}
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        options = dict(asdict(shape), layers=layers)
        cmd = [sys.executable, "-c", WRITER, str(partial), json.dumps(options)]
        measured = measure(cmd, env=child_env(REPO), cwd=work, log_path=work / "logs" / f"write-{folder.name}.log",
                           timeout_s=timeout_s)
        if not measured.ok:
            shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(f"writing the checkpoint failed: {measured.error()} (log {measured.log})")
        partial.rename(folder)
        record.update(write_wall_s=measured.wall_s, write_peak_rss_gb=measured.peak_rss_gb)
    record["bytes"] = dir_bytes(folder)
    return folder, record


def run_case(case: Case, work: Path, calib_samples: int | None, timeout_s: float) -> dict:
    """Quantize once in a fresh process; the row for the table (errors recorded, not raised)."""
    root = code_root(case.code)
    out_parent = work / "out" / case.name
    shutil.rmtree(out_parent, ignore_errors=True)   # no resumable leftovers from an earlier run
    out = out_parent / "ckpt"
    cmd = [sys.executable, "-c", LAUNCHER, "quantize", case.source, *SCHEME_ARGS[case.scheme], "-o", str(out)]
    if calib_samples:
        cmd += ["--calib-samples", str(calib_samples)]
    out_parent.mkdir(parents=True)
    page_cache = settle_page_cache(Path(case.source))
    measured = measure(cmd, env=child_env(root), cwd=out_parent, log_path=work / "logs" / f"{case.name}.log",
                       timeout_s=timeout_s)
    row = {"model": case.model, "scheme": case.scheme, "layers": case.layers, "code": case.code,
           "qfid_root": str(root), "qfid_imported_from": imported_from(measured.log), "page_cache": page_cache,
           **measured.as_dict(),
           "error": measured.error()}
    if measured.ok:
        row.update(read_outcome(out, case.layers, measured.wall_s, work / "logs" / f"{case.name}.qfid_quant.json"))
    shutil.rmtree(out_parent, ignore_errors=True)
    return row


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def settle_page_cache(source: Path) -> str:
    """Start every run from the same page cache: written pages synced, the clean cache
    dropped (where this process may: root on Linux), then the source checkpoint read once.

    A run's system time otherwise depends on what ran before it, not on the quantizer: with
    the cache full of an earlier run's files, each allocation first reclaims cached pages
    (counted as the allocating process's system time) and a source evicted meanwhile is read
    from disk (copying an 8B's 2 GB embeddings and head cost 7.7 s of system time cold,
    0.8 s warm). Both codes get the same treatment; returns what was done, for the row."""
    os.sync()
    try:
        DROP_CACHES.write_text("1\n")
        cache = "dropped"
    except OSError:
        cache = "not dropped (no permission)"
    files = [p for p in source.rglob("*") if p.is_file()] if source.is_dir() else []
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
    return f"{cache}, {'source read once' if files else 'source is a model name'}"


def imported_from(log: str) -> str | None:
    """Where the child's `qfid` came from, as its launcher printed it."""
    with open(log, errors="replace") as f:
        for line in f:
            if line.startswith("qfid imported from "):
                return line.removeprefix("qfid imported from ").strip()
    return None


def read_outcome(out: Path, layers: int | None, wall_s: float, keep_meta_as: Path) -> dict:
    """Output size and time per block from what the run wrote (`qfid_quant.json`'s summary:
    the pre-change code's `quantize` stage, the streamed pipeline's `blocks`; else wall time)."""
    if layers is None:
        layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    meta_path = next(iter(sorted(out.rglob("qfid_quant.json"))), None)
    timings = {}
    if meta_path is not None:
        shutil.copyfile(meta_path, keep_meta_as)
        timings = json.loads(meta_path.read_text()).get("summary", {}).get("timings_s", {})
    stage = next((k for k in ("blocks", "quantize") if k in timings), None)
    block_total = timings[stage] if stage else wall_s
    return {"layers": layers, "output_gb": dir_bytes(out) / 2**30, "s_per_block": block_total / layers,
            "s_per_block_from": f"timings_s.{stage}" if stage else "wall", "timings_s": timings}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
