"""`qfid demo`: the main job on the bundled default model.

Quantizes SmolLM2-135M-Instruct three ways (AWQ INT4, RTN INT4, FP8 per-channel) and puts
each next to the full-precision baseline: checkpoint size, held-out perplexity and its
drift, and how much of RTN's perplexity gap AWQ closes. Resumable: a scheme whose
checkpoint already exists is not quantized again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qfid.config import QuantConfig
from qfid.models.default import DEFAULT_MODEL_NAME, ensure_default_model
from qfid.utils.fs import atomic_write_text

DEMO_SCHEMES = {
    "awq-int4": QuantConfig(scheme="awq-int4"),
    "rtn-int4": QuantConfig(scheme="rtn-int4"),
    "fp8": QuantConfig(scheme="fp8", fp8_weights="channel", fp8_activations="dynamic"),
}


@dataclass
class SchemeRow:
    name: str
    path: Path
    checkpoint_mib: float
    heldout_ppl: float


def _quantize_missing(out: Path, console: Console) -> dict[str, Path]:
    from qfid.cli.progress import progress_callback
    from qfid.quant.pipeline import quantize_model
    from qfid.quant.report import print_summary

    paths = {}
    for name, config in DEMO_SCHEMES.items():
        target = out / name
        if (target / "qfid_quant.json").is_file():
            console.print(f"[dim]{name}: reusing {target}[/dim]")
        else:
            with progress_callback(transient=True) as progress:
                print_summary(quantize_model(DEFAULT_MODEL_NAME, config, target, overwrite=True, progress=progress), console)
        paths[name] = target
    return paths


def _rows(baseline: Path, paths: dict[str, Path]) -> list[SchemeRow]:
    from qfid.quant.heldout import heldout_perplexity
    from qfid.quant.pipeline import dir_bytes

    rows = [SchemeRow("fp32 (baseline)", baseline, dir_bytes(baseline) / 2**20, heldout_perplexity(baseline))]
    for name, path in paths.items():
        rows.append(SchemeRow(name, path, dir_bytes(path) / 2**20, heldout_perplexity(path)))
    return rows


def _render(rows: list[SchemeRow], console: Console) -> dict:
    base = rows[0].heldout_ppl
    table = Table(title="qfid demo: SmolLM2-135M-Instruct, held-out perplexity (text never used for calibration)")
    for col in ("scheme", "checkpoint", "held-out ppl", "delta vs fp32"):
        table.add_column(col, justify="right" if col != "scheme" else "left")
    for row in rows:
        table.add_row(row.name, f"{row.checkpoint_mib:,.1f} MiB", f"{row.heldout_ppl:.3f}", f"{row.heldout_ppl - base:+.3f}")
    console.print(table)
    by_name = {r.name: r.heldout_ppl - base for r in rows}
    gap_ratio = by_name["awq-int4"] / by_name["rtn-int4"] if by_name.get("rtn-int4") else None
    if gap_ratio is not None:
        console.print(f"AWQ closes {100 * (1 - gap_ratio):.0f}% of RTN's perplexity gap (dAWQ/dRTN = {gap_ratio:.3f}).")
    return {"rows": [{"scheme": r.name, "path": str(r.path), "checkpoint_mib": r.checkpoint_mib,
                      "heldout_ppl": r.heldout_ppl, "delta_vs_baseline": r.heldout_ppl - base} for r in rows],
            "awq_over_rtn_gap": gap_ratio}


def run_demo(output: str | Path = "out/demo") -> dict:
    console = Console()
    out = Path(output)
    baseline = ensure_default_model()
    paths = _quantize_missing(out, console)
    summary = _render(_rows(baseline, paths), console)
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    console.print(f"summary written to {out / 'demo_summary.json'}")
    return summary
