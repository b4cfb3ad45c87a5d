"""`qfid demo`: the whole story on the bundled default model (SmolLM2-135M-Instruct).

1. quantize it three ways (AWQ INT4, RTN INT4, FP8 per-channel);
2. held-out perplexity of each checkpoint next to the original (computed in fp32);
3. evaluate the original and all three on every built-in suite (the domain suites in both
   their generation and log-likelihood forms, and the general control), all in bf16
   activations: what a server runs, and the move the mission is about (16-bit -> INT4/FP8);
4. compare each candidate with the baseline item by item and write the report;
5. answer "which scheme would you ship for which suite, and why" from the comparisons.

Every step is resumable: a finished checkpoint or eval run is reused on the next call. The
default item limit (about 120 per suite) keeps `make demo` under 15 minutes on 2 cores on a
fresh machine; `--full` runs every item. The report states each suite's power (the
smallest accuracy drop the run can detect) next to its result.
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
DEMO_LIMIT = 120
BASELINE = "bf16"
EVAL_DTYPE = "bfloat16"


def demo_suites() -> list[str]:
    """Every built-in suite."""
    from qfid.evals.suite import builtin_suite_names

    return builtin_suite_names()


@dataclass
class SchemeRow:
    name: str
    path: Path
    checkpoint_mib: float
    heldout_ppl: float


def run_demo(output: str | Path = "out/demo", reports: str | Path = "reports", full: bool = False,
             backend: str = "engine") -> dict:
    console = Console()
    out, reports = Path(output), Path(reports)
    models = {BASELINE: ensure_default_model(), **_quantize_missing(out, console)}
    rows = _perplexity_rows(models)
    ppl_summary = _render_perplexity(rows, console)
    runs_dir = reports / "runs"
    _evaluate_missing(models, runs_dir, None if full else DEMO_LIMIT, backend, console)
    comparisons = _compare(models, runs_dir)
    from qfid.evals.report import write_report

    paths = write_report(comparisons, reports / "demo" / "report.html",
                         title="qfid demo: SmolLM2-135M-Instruct, bf16 vs AWQ INT4, RTN INT4, FP8 (bf16 activations)")
    verdict = ship_verdict(comparisons, {r.name: r.checkpoint_mib for r in rows})
    _render_verdict(verdict, console)
    summary = {"perplexity": ppl_summary, "verdict": verdict, "report": {k: str(v) for k, v in paths.items()}}
    atomic_write_text(reports / "demo" / "summary.json", json.dumps(summary, indent=2) + "\n")
    _append_verdict_markdown(paths["md"], verdict)
    console.print(f"report: {paths['html']}  (markdown: {paths['md']})")
    return summary


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


def _perplexity_rows(models: dict[str, Path]) -> list[SchemeRow]:
    from qfid.quant.heldout import heldout_perplexity
    from qfid.quant.pipeline import dir_bytes

    return [SchemeRow(name, path, dir_bytes(path) / 2**20, heldout_perplexity(path)) for name, path in models.items()]


def _render_perplexity(rows: list[SchemeRow], console: Console) -> dict:
    base = rows[0].heldout_ppl
    table = Table(title="held-out perplexity in fp32 (text never used for calibration)")
    for col in ("scheme", "checkpoint", "held-out ppl", "delta vs original"):
        table.add_column(col, justify="left" if col == "scheme" else "right")
    for row in rows:
        table.add_row(row.name, f"{row.checkpoint_mib:,.1f} MiB", f"{row.heldout_ppl:.3f}", f"{row.heldout_ppl - base:+.3f}")
    console.print(table)
    delta = {r.name: r.heldout_ppl - base for r in rows}
    gap = delta["awq-int4"] / delta["rtn-int4"] if delta.get("rtn-int4") else None
    if gap is not None:
        console.print(f"AWQ closes {100 * (1 - gap):.0f}% of RTN's perplexity gap (dAWQ/dRTN = {gap:.3f}).")
    return {"rows": [{"scheme": r.name, "checkpoint_mib": round(r.checkpoint_mib, 2), "heldout_ppl": r.heldout_ppl,
                      "delta_vs_baseline": r.heldout_ppl - base} for r in rows], "awq_over_rtn_gap": gap}


def _evaluate_missing(models: dict[str, Path], runs_dir: Path, limit: int | None, backend: str, console: Console) -> None:
    from qfid.evals.backends import make_backend
    from qfid.evals.runner import RunOptions, build_manifest, now, run_suites
    from qfid.evals.store import RunStore
    from qfid.evals.suite import load_suites

    names = demo_suites()
    suites = load_suites(names)
    for name, path in models.items():
        store = RunStore(runs_dir, name)
        if store.manifest_file.is_file() and store.manifest().get("status") == "complete":
            console.print(f"[dim]eval {name}: reusing {store.path}[/dim]")
            continue
        options = RunOptions(model=str(path), limit=limit, seed=0, top_k=10, batch_items=16)
        runner_backend = make_backend(backend, str(path), batch_size=8, dtype=EVAL_DTYPE)
        store.open(build_manifest(name, runner_backend, suites, options), overwrite=True)
        console.print(f"eval {name} on {', '.join(names)} (limit {limit or 'none'}, {EVAL_DTYPE})")
        store.finish(run_suites(runner_backend, suites, store, options), now())


def _compare(models: dict[str, Path], runs_dir: Path):
    from qfid.evals.report import compare_many

    return compare_many(BASELINE, [name for name in models if name != BASELINE], runs_dir)


def ship_verdict(comparisons, sizes_mib: dict[str, float]) -> dict:
    """Per suite, the smallest checkpoint whose comparison passes the default gate there,
    with the figures that decide it; and whether the general control hid a domain problem.
    Computed from the runs only: nothing here is a fixed conclusion."""
    from qfid.evals.gate import evaluate_gate
    from qfid.evals.gate_config import GateConfig

    config = GateConfig()
    suites: dict[str, list[dict]] = {}
    for comparison in comparisons:
        scheme = comparison.candidate["name"]
        failures = evaluate_gate(comparison, config).failures
        for group in comparison.rows("suite"):
            failed = [f.message for f in failures if f.group == group.name or f.group.startswith(f"{group.name}/")]
            suites.setdefault(group.name, []).append({
                "scheme": scheme, "size_mib": round(sizes_mib.get(scheme, float("nan")), 1),
                "delta_pts": round(100 * group.delta, 2), "ci_pts": [round(100 * group.ci_low, 2), round(100 * group.ci_high, 2)],
                "flip_rate": round(group.flip_rate, 3), "mean_kl": group.mean_kl, "mcnemar_p": group.mcnemar_p,
                "significant_regression": group.significant_regression, "n": group.n,
                "min_detectable_drop_pts": round(100 * group.min_detectable_drop, 1), "gate_failures": failed,
            })
    picks = {suite: _pick(rows) for suite, rows in suites.items()}
    return {"suites": suites, "ship": picks, "control": _control_check(comparisons)}


def _pick(rows: list[dict]) -> dict:
    passing = sorted((r for r in rows if not r["gate_failures"]), key=lambda r: r["size_mib"])
    if not passing:
        return {"scheme": BASELINE, "why": "every quantized scheme breaks a gate threshold on this suite"}
    best = passing[0]
    rejected = [f"{r['scheme']} ({'; '.join(r['gate_failures'])})" for r in rows if r["gate_failures"]]
    why = (f"smallest checkpoint that passes the gate: {best['size_mib']} MiB, accuracy {best['delta_pts']:+.1f} pts "
           f"(95% CI {best['ci_pts'][0]:+.1f} to {best['ci_pts'][1]:+.1f}), flip rate {best['flip_rate']:.1%}; "
           f"drops under {best['min_detectable_drop_pts']:.0f} pts are below this run's power")
    if rejected:
        why += "; rejected: " + ", ".join(rejected)
    return {"scheme": best["scheme"], "why": why}


def _control_check(comparisons) -> list[dict]:
    """The thesis, measured: does a scheme regress significantly on a domain suite, or on a
    category or language inside one (McNemar, as the gate judges it), while the general
    control does not? Then the control alone would have hidden the regression."""
    findings = []
    for comparison in comparisons:
        control = comparison.group("suite", "general")
        domain = [g for g in comparison.rows("suite") if g.name != "general"]
        if control is None or not domain:
            continue
        worst = min(domain, key=lambda g: g.delta)
        most_flips = max(domain, key=lambda g: g.flip_rate)
        regressions = [g for g in comparison.regressions() if g.name.split("/")[0] not in ("general", "general-ppl")]
        sharpest = min(regressions, key=lambda g: g.delta, default=None)
        ppl = next((p for p in comparison.perplexity if p.suite == "general-ppl"), None)
        findings.append({
            "scheme": comparison.candidate["name"],
            "general_delta_pts": round(100 * control.delta, 2), "general_flip_rate": round(control.flip_rate, 3),
            "general_significant": control.significant_regression,
            "perplexity_change": None if ppl is None else round(ppl.change, 4),
            "worst_domain_suite": worst.name, "worst_domain_delta_pts": round(100 * worst.delta, 2),
            "worst_domain_significant": worst.significant_regression,
            "most_flips_suite": most_flips.name, "most_flips_rate": round(most_flips.flip_rate, 3),
            "domain_regressions": [{"level": g.level, "name": g.name, "delta_pts": round(100 * g.delta, 2),
                                    "mcnemar_p": g.mcnemar_p, "n": g.n} for g in regressions],
            "sharpest_regression": None if sharpest is None else sharpest.name,
            "control_hides_domain_change": bool(regressions) and not control.significant_regression,
        })
    return findings


def _verdict_lines(verdict: dict) -> list[str]:
    lines = [f"- **{suite}**: ship **{pick['scheme']}** — {pick['why']}" for suite, pick in verdict["ship"].items()]
    for f in verdict["control"]:
        ppl = "n/a" if f["perplexity_change"] is None else f"{100 * f['perplexity_change']:+.1f}%"
        if f["control_hides_domain_change"]:
            sharpest = next(r for r in f["domain_regressions"] if r["name"] == f["sharpest_regression"])
            lines.append(f"- {f['scheme']}: the general control moved {f['general_delta_pts']:+.1f} pts (not significant; "
                         f"perplexity {ppl}) while {len(f['domain_regressions'])} domain group(s) regressed significantly, "
                         f"sharpest {sharpest['level']} {sharpest['name']} {sharpest['delta_pts']:+.1f} pts "
                         f"(McNemar p={sharpest['mcnemar_p']:.3g}, n={sharpest['n']}); {f['most_flips_suite']} flipped "
                         f"{f['most_flips_rate']:.1%} of its items: the control alone would have hidden it.")
        elif f["domain_regressions"]:
            lines.append(f"- {f['scheme']}: domain groups regressed significantly, and so did the general control "
                         f"({f['general_delta_pts']:+.1f} pts, perplexity {ppl}): here the control would have caught it.")
        else:
            lines.append(f"- {f['scheme']}: the data does not show the control hiding a domain regression here "
                         f"(general {f['general_delta_pts']:+.1f} pts, perplexity {ppl}; worst domain suite "
                         f"{f['worst_domain_suite']} {f['worst_domain_delta_pts']:+.1f} pts; no domain suite, "
                         f"category or language regressed significantly).")
    return lines


def _render_verdict(verdict: dict, console: Console) -> None:
    console.print("\n[bold]Which scheme would you ship, per suite?[/bold]")
    for line in _verdict_lines(verdict):
        console.print(line.replace("**", ""))


def _append_verdict_markdown(md_path: Path, verdict: dict) -> None:
    text = md_path.read_text(encoding="utf-8")
    atomic_write_text(md_path, text + "\n## Verdict: which scheme to ship for which suite\n\n" + "\n".join(_verdict_lines(verdict)) + "\n")
