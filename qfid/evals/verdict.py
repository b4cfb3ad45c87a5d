"""Which checkpoint to ship: the verdict a sweep (and the demo, which is a sweep) draws
from its comparisons. Per suite and overall, the smallest checkpoint that passes every gate
threshold, with the figures that decide it; and the control check, the thesis measured:
did a scheme regress on a domain while the general control stayed flat?"""
from __future__ import annotations

from qfid.evals.compare import Comparison
from qfid.evals.gate import evaluate_gate
from qfid.evals.gate_config import GateConfig


def ship_verdict(comparisons: list[Comparison], sizes_mib: dict[str, float], config: GateConfig | None = None,
                 baseline: str = "the baseline") -> dict:
    """Per suite, the smallest checkpoint whose comparison passes the gate there, with the
    figures that decide it; overall, the smallest that passes every suite; and whether the
    general control hid a domain problem. Computed from the runs only: nothing here is a
    fixed conclusion."""
    config = config or GateConfig()
    suites: dict[str, list[dict]] = {}
    broken: dict[str, list[str]] = {}
    for comparison in comparisons:
        scheme = comparison.candidate["name"]
        failures = evaluate_gate(comparison, config).failures
        broken[scheme] = [f.message for f in failures]
        for group in comparison.rows("suite"):
            failed = [f.message for f in failures if f.group == group.name or f.group.startswith(f"{group.name}/")]
            suites.setdefault(group.name, []).append({
                "scheme": scheme, "size_mib": round(sizes_mib.get(scheme, float("nan")), 1),
                "delta_pts": round(100 * group.delta, 2), "ci_pts": [round(100 * group.ci_low, 2), round(100 * group.ci_high, 2)],
                "flip_rate": round(group.flip_rate, 3), "mean_kl": group.mean_kl, "mcnemar_p": group.mcnemar_p,
                "significant_regression": group.significant_regression, "n": group.n,
                "min_detectable_drop_pts": round(100 * group.min_detectable_drop, 1), "gate_failures": failed,
            })
    picks = {suite: _pick(rows, baseline) for suite, rows in suites.items()}
    return {"suites": suites, "ship": picks, "overall": _overall(broken, sizes_mib, baseline),
            "control": _control_check(comparisons), "gate": config.source}


def _overall(broken: dict[str, list[str]], sizes_mib: dict[str, float], baseline: str) -> dict:
    """The smallest scheme that passes every gate threshold (every suite, category,
    language and perplexity check), or the thresholds each scheme breaks."""
    sizes = {s: round(sizes_mib.get(s, float("nan")), 1) for s in broken}
    passing = sorted((s for s, failed in broken.items() if not failed), key=lambda s: sizes[s])
    if passing:
        return {"scheme": passing[0], "passes": True, "size_mib": sizes[passing[0]],
                "why": f"smallest checkpoint ({sizes[passing[0]]} MiB) that passes every gate threshold on every suite",
                "broken": {s: f for s, f in broken.items() if f}}
    return {"scheme": baseline, "passes": False, "size_mib": None,
            "why": "nothing passes: every candidate breaks at least one gate threshold", "broken": broken}


def _pick(rows: list[dict], baseline: str) -> dict:
    passing = sorted((r for r in rows if not r["gate_failures"]), key=lambda r: r["size_mib"])
    if not passing:
        return {"scheme": baseline, "why": "every quantized scheme breaks a gate threshold on this suite"}
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


def verdict_lines(verdict: dict) -> list[str]:
    overall = verdict["overall"]
    lines = [f"- **overall**: ship **{overall['scheme']}** — {overall['why']}"]
    if not overall["passes"]:
        lines += [f"  - {scheme}: {'; '.join(failed)}" for scheme, failed in overall["broken"].items()]
    lines += [f"- **{suite}**: ship **{pick['scheme']}** — {pick['why']}" for suite, pick in verdict["ship"].items()]
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
