"""The sweep's own part of the report: what a user decides from, before the per-comparison
detail `qfid report` already writes.

1. one row per checkpoint: size, engine throughput, held-out perplexity, worst group and
   domain KL against the baseline, gate verdict;
2. the Pareto front of size against fidelity (plot);
3. the recommendation, per suite and overall (evals/verdict.py);
4. kept layers: each `+keep:N` next to its base, per domain suite;
5. built-in vs suite calibration, compared item by item (a paired test between the two
   candidates, so "not significant" is said where it is so);
6. `+keep:auto` searches and the most sensitive units.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from qfid.evals.compare import Comparison
from qfid.evals.html_report import figure_html, table_html
from qfid.evals.markdown import markdown_table
from qfid.evals.report import Preface, compare_many, write_report
from qfid.evals.verdict import verdict_lines
from qfid.sweep.pareto import Fidelity, fidelity, fronts, pareto_figure
from qfid.sweep.schemes import SUITE_CALIB
from qfid.utils.fs import atomic_write_text

TOP_UNITS_SHOWN = 10
PARETO_CAPTION = ("Checkpoint size against the worst group's accuracy delta (left) and the domain suites' mean KL "
                  "(right), both against the baseline; blue points form the Pareto front.")


def build_summary(sweep, comparisons: list[Comparison], sizes: dict[str, float], verdict: dict,
                  measured: dict[str, dict]) -> dict:
    """`measured`: per checkpoint name (the baseline's too) its output_tok_s and heldout_ppl."""
    from qfid.sweep.run import BASELINE, weights_mib

    base_mib = weights_mib(sweep.source)
    base_tps = measured[BASELINE]["output_tok_s"]
    rows = [_baseline_row(base_mib, measured[BASELINE])]
    fid = [fidelity(c, sizes[c.candidate["name"]]) for c in comparisons]
    for candidate, f in zip(sweep.candidates, fid):
        rows.append(_candidate_row(candidate.name, f, base_mib, base_tps, measured[candidate.name], verdict))
    return {
        "model": str(sweep.source), "suites": [s.name for s in sweep.suites], "item_limit": sweep.o.limit,
        "gate": verdict["gate"], "calibration": sweep.o.calib or "built-in corpus", "baseline": BASELINE,
        "rows": rows, "pareto_front": fronts(fid), "verdict": verdict,
        "keep": _keep_tables(sweep, comparisons, sizes), "calibration_comparison": _calibration_pairs(sweep),
        "keep_searches": {name: {"n": s.n, "max_n": s.max_n, "evaluated": {str(k): v for k, v in s.evaluated.items()},
                                 "summary": s.summary()} for name, s in sweep.searches.items()},
        "sensitivity": {base: [{"unit": list(s.unit), "kl": s.kl} for s in ranking[:TOP_UNITS_SHOWN]]
                        for base, ranking in sweep.rankings.items()},
        "kept_units": {c.name: c.kept_units for c in sweep.candidates if c.kept_units},
        "time": time_summary(sweep.steps, sweep.timings),
    }


STEP_KINDS = {"quantize": "quantization", "sensitivity": "sensitivity", "eval": "evaluation",
              "output_tok_s": "throughput", "heldout_ppl": "held-out perplexity"}


def time_summary(steps: list[str], timings: dict[str, float]) -> dict:
    """What the sweep's steps cost, each step once, from the call that ran it (timings.json):
    the total, by kind of step, and the steps with no figure (run before it was recorded)."""
    import os

    steps = list(dict.fromkeys(steps))
    by_kind: dict[str, float] = {}
    for step in steps:
        if step in timings:
            kind = STEP_KINDS.get(step.split(" ", 1)[0], step.split(" ", 1)[0])
            by_kind[kind] = round(by_kind.get(kind, 0.0) + timings[step], 1)
    return {"total_s": round(sum(by_kind.values()), 1), "by_kind": by_kind,
            "by_step": {step: timings[step] for step in steps if step in timings},
            "unrecorded": [step for step in steps if step not in timings], "cpu_cores": os.cpu_count()}


def _time_line(time: dict) -> str:
    kinds = ", ".join(f"{kind} {seconds / 60:.1f}" for kind, seconds in time["by_kind"].items())
    line = (f"Time: the sweep's steps took {time['total_s'] / 60:.1f} min on this machine "
            f"({time['cpu_cores']} CPU cores; minutes by step kind: {kinds}).")
    if time["unrecorded"]:
        line += f" Not timed (run before timings were recorded): {', '.join(time['unrecorded'])}."
    return line


def _baseline_row(base_mib: float, measured: dict) -> dict:
    from qfid.sweep.run import BASELINE

    base_tps = measured["output_tok_s"]
    return {"scheme": BASELINE, "size_mib": round(base_mib, 1), "size_ratio": 1.0, "output_tok_s": base_tps,
            "throughput_ratio": 1.0 if base_tps else None, "heldout_ppl": measured["heldout_ppl"],
            "worst_group": None, "worst_delta_pts": 0.0, "worst_significant": False, "mean_kl": 0.0,
            "passes": True, "failures": []}


def _candidate_row(name: str, f: Fidelity, base_mib: float, base_tps: float | None, measured: dict,
                   verdict: dict) -> dict:
    tps = measured["output_tok_s"]
    failures = verdict["overall"]["broken"].get(name, [])
    return {"scheme": name, "size_mib": round(f.size_mib, 1), "size_ratio": round(f.size_mib / base_mib, 3),
            "output_tok_s": tps, "throughput_ratio": round(tps / base_tps, 3) if tps and base_tps else None,
            "heldout_ppl": measured["heldout_ppl"], "worst_group": f.worst_group,
            "worst_delta_pts": round(f.worst_delta_pts, 2), "worst_significant": f.worst_significant,
            "mean_kl": f.mean_kl, "passes": not failures, "failures": failures}


def _domain_cells(comparison: Comparison, domain: list[str]) -> dict:
    cells = {}
    for name in domain:
        g = comparison.group("suite", name)
        if g is not None:
            cells[name] = {"delta_pts": round(100 * g.delta, 2), "mean_kl": g.mean_kl, "significant": g.significant_regression}
    return cells


def _keep_tables(sweep, comparisons: list[Comparison], sizes: dict[str, float]) -> list[dict]:
    """Per family (base scheme, keep precision, calibration): N -> size and per-suite fidelity."""
    by_name = {c.candidate["name"]: c for c in comparisons}
    families: dict[tuple, list[dict]] = {}
    for cand in sweep.candidates:
        s = cand.scheme
        if s.keep_as is None:
            continue
        key = (s.base, s.keep_as, s.suite_calib)
        families.setdefault(key, []).append({"n": s.keep_n or 0, "scheme": cand.name, "size_mib": round(sizes[cand.name], 1),
                                             "suites": _domain_cells(by_name[cand.name], sweep.domain_suites)})
    for cand in sweep.candidates:   # the base scheme itself is N = 0
        s = cand.scheme
        for (base, keep_as, suite_calib), rows in families.items():
            if s.keep_as is None and s.base == base and s.suite_calib == suite_calib and not any(r["n"] == 0 for r in rows):
                rows.append({"n": 0, "scheme": cand.name, "size_mib": round(sizes[cand.name], 1),
                             "suites": _domain_cells(by_name[cand.name], sweep.domain_suites)})
    return [{"base": base, "keep_as": keep_as, "suite_calibration": suite_calib,
             "rows": sorted(rows, key=lambda r: r["n"])} for (base, keep_as, suite_calib), rows in families.items()]


def _calibration_pairs(sweep) -> list[dict]:
    """Each X with an X@suite in the sweep: the suite-calibrated candidate against the
    built-in-calibrated one, item by item, per domain suite."""
    names = {c.name: c for c in sweep.candidates}
    pairs = []
    for name, cand in names.items():
        suite_name = name + SUITE_CALIB
        if cand.scheme.suite_calib or suite_name not in names:
            continue
        (comparison,) = compare_many(cand.scheme.folder, [names[suite_name].scheme.folder], sweep.runs_dir)
        suites = {}
        for domain in sweep.domain_suites:
            g = comparison.group("suite", domain)
            if g is None:
                continue
            significant = g.mcnemar_p < comparison.alpha and (g.ci_low > 0 or g.ci_high < 0)
            suites[domain] = {"delta_pts": round(100 * g.delta, 2), "ci_pts": [round(100 * g.ci_low, 2), round(100 * g.ci_high, 2)],
                              "mcnemar_p": g.mcnemar_p, "n": g.n, "mean_kl_between": g.mean_kl, "significant": significant}
        pairs.append({"builtin": name, "suite": suite_name, "suites": suites})
    return pairs


# -- rendering --------------------------------------------------------------------------------

ROW_HEADERS = ("scheme", "weights MiB", "size", "output tok/s", "speed", "held-out ppl", "worst group", "worst Δ pts",
               "domain mean KL", "gate")


def _row_cells(row: dict) -> list[str]:
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    worst = row["worst_group"] or "-"
    delta = f"{row['worst_delta_pts']:+.1f}" + (" (sig.)" if row["worst_significant"] else "")
    gate = "baseline" if row["worst_group"] is None else ("pass" if row["passes"] else f"fail ({len(row['failures'])})")
    return [row["scheme"], f"{row['size_mib']:,.1f}", f"{row['size_ratio']:.2f}x", num(row["output_tok_s"], ".0f"),
            "n/a" if row["throughput_ratio"] is None else f"{row['throughput_ratio']:.2f}x", f"{row['heldout_ppl']:.3f}",
            worst, delta, num(row["mean_kl"], ".4f"), gate]


def _keep_headers(table: dict) -> list[str]:
    suites = list(table["rows"][0]["suites"]) if table["rows"] else []
    return ["N kept", "scheme", "weights MiB", *[f"{s} Δ pts / KL" for s in suites], "mean Δ pts", "mean KL"]


def _keep_cells(row: dict) -> list[str]:
    cells = [f"{c['delta_pts']:+.1f}{'*' if c['significant'] else ''} / "
             f"{'n/a' if c['mean_kl'] is None else format(c['mean_kl'], '.4f')}" for c in row["suites"].values()]
    deltas = [c["delta_pts"] for c in row["suites"].values()]
    kls = [c["mean_kl"] for c in row["suites"].values() if c["mean_kl"] is not None]
    return [str(row["n"]), row["scheme"], f"{row['size_mib']:,.1f}", *cells,
            f"{sum(deltas) / len(deltas):+.2f}" if deltas else "n/a", f"{sum(kls) / len(kls):.4f}" if kls else "n/a"]


def _calib_lines(pair: dict) -> list[str]:
    lines = []
    for suite, c in pair["suites"].items():
        verdict = "significant" if c["significant"] else "not significant"
        lines.append(f"{suite}: {pair['suite']} vs {pair['builtin']} {c['delta_pts']:+.1f} pts "
                     f"(95% CI {c['ci_pts'][0]:+.1f} to {c['ci_pts'][1]:+.1f}, McNemar p={c['mcnemar_p']:.3g}, "
                     f"n={c['n']}): {verdict}")
    return lines


def _sections(summary: dict) -> list[tuple[str, list[str], list[list[str]] | None, list[str]]]:
    """(heading, headers, rows, lines) per section, shared by both renderings."""
    limit = summary["item_limit"]
    intro = [f"Model {summary['model']}; suites {', '.join(summary['suites'])}; "
             f"{'every item' if limit is None else f'about {limit} items per suite (a seeded sample)'}; "
             f"gate thresholds from {summary['gate']}; calibration: {summary['calibration']}. "
             f"Every candidate is compared with the {summary['baseline']} baseline item by item; 'sig.' marks a "
             f"significant regression (McNemar and the bootstrap CI agree); other differences are not significant.",
             _time_line(summary["time"])]
    sections = [("Sweep: size, speed and fidelity", list(ROW_HEADERS), [_row_cells(r) for r in summary["rows"]], intro)]
    front = summary["pareto_front"]
    sections.append(("Pareto front", [], None, [f"worst-group accuracy: {', '.join(front['worst_group_delta'])}",
                                                  f"domain mean KL: {', '.join(front['mean_kl'])}"]))
    sections.append(("Recommendation", [], None, verdict_lines(summary["verdict"])))
    for table in summary["keep"]:
        title = (f"Kept layers: {table['base']} + N most sensitive units in {table['keep_as'].upper()}"
                 f"{' (suite calibration)' if table['suite_calibration'] else ''}")
        sections.append((title, _keep_headers(table), [_keep_cells(r) for r in table["rows"]],
                         ["Per domain suite: accuracy delta against the baseline (* significant) / mean KL."]))
    for pair in summary["calibration_comparison"]:
        sections.append((f"Calibration: built-in corpus vs the domain suites' split ({pair['builtin']})", [], None,
                         _calib_lines(pair)))
    for name, search in summary["keep_searches"].items():
        tried = ", ".join(f"N={n}: {'pass' if ok else 'fail'}" for n, ok in search["evaluated"].items())
        sections.append((f"{name}: bisection over N", [], None, [search["summary"], f"evaluated: {tried}"]))
    for base, units in summary["sensitivity"].items():
        rows = [[str(i + 1), ", ".join(u["unit"]), f"{u['kl']:.5f}"] for i, u in enumerate(units)]
        sections.append((f"Most sensitive units of {base}", ["rank", "unit (fused)", "KL when alone quantized"], rows, []))
    return sections


def _html(sections, pareto_png: bytes | None) -> str:
    parts = []
    for heading, headers, rows, lines in sections:
        parts.append(f"<h2>{escape(heading)}</h2>")
        parts += [f"<p>{escape(line)}</p>" for line in lines if not line.startswith("- ")]
        bullets = [line for line in lines if line.startswith("- ") or line.startswith("  - ")]
        if bullets:
            parts.append("<ul>" + "".join(f"<li>{escape(b.lstrip(' -').replace('**', ''))}</li>" for b in bullets) + "</ul>")
        if rows:
            parts.append(table_html(headers, [(r, False) for r in rows]))
        if heading == "Pareto front" and pareto_png:
            parts.append(figure_html("pareto", pareto_png, PARETO_CAPTION))
    return "\n".join(parts)


def _markdown(sections, pareto_link: str | None) -> str:
    parts = []
    for heading, headers, rows, lines in sections:
        parts += [f"## {heading}", ""]
        parts += [line if line.startswith(("-", "  -")) else line + "\n" for line in lines]
        if rows:
            parts += ["", markdown_table(headers, rows)]
        if heading == "Pareto front" and pareto_link:
            parts += ["", f"![{PARETO_CAPTION}]({pareto_link})"]
        parts.append("")
    return "\n".join(parts)


def write_sweep_report(sweep, comparisons: list[Comparison], summary: dict) -> dict[str, Path]:
    from qfid.evals.plots import figure_png

    rows = [Fidelity(r["scheme"], r["size_mib"], r["worst_group"], r["worst_delta_pts"], r["worst_significant"], r["mean_kl"])
            for r in summary["rows"][1:]]
    pareto_png = figure_png(pareto_figure(rows, summary["pareto_front"], summary["rows"][0]["size_mib"])) if rows else None
    sections = _sections(summary)
    html_path = sweep.o.report / "report.html"
    link = f"{html_path.with_suffix('').name}-plots/pareto.png" if pareto_png else None
    preface = Preface(_html(sections, pareto_png), _markdown(sections, link), {"pareto": pareto_png} if pareto_png else {})
    title = sweep.o.title or f"qfid sweep: {Path(summary['model']).name}, {', '.join(r['scheme'] for r in summary['rows'][1:])}"
    paths = write_report(comparisons, html_path, title, preface)
    paths["summary"] = sweep.o.report / "summary.json"
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return paths
