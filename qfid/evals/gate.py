"""The gate: turn a comparison into pass/fail checks against configured thresholds.

One check per threshold per group (what the JUnit XML lists as test cases):
- accuracy drop (points) for every suite, category and language group, against
  `GateConfig.accuracy_drop_limit` (see gate_config.py for why a drop must also be
  significant by default; an over-the-limit drop that is not is "inconclusive");
- flip rate and mean KL per suite (per category they would be too noisy to gate on: one flip
  in a 9-item category is 11%);
- perplexity increase per perplexity suite, when `max_perplexity_increase` is set.
A check whose figure is unavailable (no top-k stored) is "skipped", never a silent pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qfid.evals.compare import Comparison, GroupStats, compare_runs
from qfid.evals.gate_config import OVERRIDE_LEVELS, GateConfig

GATED_DROP_LEVELS = ("suite", "category", "lang")


@dataclass
class Check:
    metric: str          # accuracy_drop | flip_rate | mean_kl | perplexity_increase
    level: str           # suite | category | lang
    group: str
    value: float | None  # in the limit's unit
    limit: float
    status: str          # pass | fail | inconclusive | skipped
    message: str         # one line: the group, the figure and the limit

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class GateResult:
    baseline: str
    candidate: str
    config_source: str
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def passed(self) -> bool:
        return not self.failures


def gate_runs(base_ref, cand_ref, config: GateConfig, runs_dir="reports/runs", intersect: bool = False) -> tuple[GateResult, Comparison]:
    """Compare at the config's significance level, then check the thresholds."""
    comparison = compare_runs(base_ref, cand_ref, runs_dir, intersect=intersect, alpha=config.alpha)
    return evaluate_gate(comparison, config), comparison


def evaluate_gate(comparison: Comparison, config: GateConfig) -> GateResult:
    if comparison.alpha != config.alpha:
        raise ValueError(f"comparison made at alpha={comparison.alpha}, gate configured for alpha={config.alpha}")
    checks = [_accuracy_check(g, config) for level in GATED_DROP_LEVELS for g in comparison.rows(level)]
    for suite in comparison.rows("suite"):
        checks += [_flip_check(suite, config), _kl_check(suite, config)]
    if config.max_perplexity_increase is not None:
        checks += [_perplexity_check(row, config.max_perplexity_increase) for row in comparison.perplexity]
    warnings = [c.message for c in checks if c.status == "inconclusive"] + _unused_overrides(comparison, config)
    return GateResult(comparison.baseline["name"], comparison.candidate["name"], config.source, checks, warnings)


def _accuracy_check(group: GroupStats, config: GateConfig) -> Check:
    drop = -100 * group.delta + 0.0  # + 0.0 turns an unchanged -0.0 into 0.0 for the message
    limit = config.accuracy_drop_limit(group.level, group.name)
    figure = (f"{group.level} {group.name}: accuracy drop {drop:.1f} points ({100 * group.base_acc:.1f}% -> {100 * group.cand_acc:.1f}%, "
              f"95% CI of the change {100 * group.ci_low:+.1f} to {100 * group.ci_high:+.1f}, McNemar p={group.mcnemar_p:.3g}, n={group.n})")
    if drop <= limit:
        status, message = "pass", f"{figure} <= limit {limit:g} points"
    elif group.significant_regression or not config.require_significance:
        status, message = "fail", f"{figure} > limit {limit:g} points"
    else:
        status, message = "inconclusive", (f"{figure} > limit {limit:g} points but not significant at alpha={config.alpha:g} "
                                           f"(this group detects drops of {100 * group.min_detectable_drop:.1f} points or more)")
    return Check("accuracy_drop", group.level, group.name, drop, limit, status, message)


def _flip_check(suite: GroupStats, config: GateConfig) -> Check:
    limit = config.max_flip_rate
    status = "fail" if suite.flip_rate > limit else "pass"
    message = (f"suite {suite.name}: flip rate {100 * suite.flip_rate:.1f}% (correct->wrong {suite.correct_to_wrong}, "
               f"wrong->correct {suite.wrong_to_correct} of {suite.n}) {'>' if status == 'fail' else '<='} limit {100 * limit:g}%")
    return Check("flip_rate", "suite", suite.name, suite.flip_rate, limit, status, message)


def _kl_check(suite: GroupStats, config: GateConfig) -> Check:
    limit = config.max_mean_kl
    if suite.mean_kl is None:
        return Check("mean_kl", "suite", suite.name, None, limit, "skipped",
                     f"suite {suite.name}: mean KL unavailable (no comparable top-k log-probs; evaluate with --top-k > 0)")
    status = "fail" if suite.mean_kl > limit else "pass"
    message = (f"suite {suite.name}: mean KL {suite.mean_kl:.4f} nats/token over {suite.kl_tokens} answer tokens "
               f"{'>' if status == 'fail' else '<='} limit {limit:g}")
    return Check("mean_kl", "suite", suite.name, suite.mean_kl, limit, status, message)


def _perplexity_check(row, limit: float) -> Check:
    increase = 100 * row.change
    status = "fail" if increase > limit else "pass"
    message = (f"suite {row.suite}: perplexity {increase:+.1f}% ({row.base_ppl:.3f} -> {row.cand_ppl:.3f}, {row.n} texts) "
               f"{'>' if status == 'fail' else '<='} limit {limit:g}%")
    return Check("perplexity_increase", "suite", row.suite, increase, limit, status, message)


def _unused_overrides(comparison: Comparison, config: GateConfig) -> list[str]:
    """Override names that match no group: usually a typo, which would leave the default limit in force."""
    warnings = []
    for level in OVERRIDE_LEVELS:
        names = {g.name for g in comparison.rows(level)}
        bare = {n.split("/", 1)[1] for n in names if "/" in n}
        for key in getattr(config, level):
            if key != "*" and key not in names and key not in bare:
                warnings.append(f"{config.source}: {level} override {key!r} matches no {level} in these runs")
    return warnings

