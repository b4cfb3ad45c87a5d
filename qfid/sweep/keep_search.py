"""`+keep:auto`: the smallest number of kept units whose checkpoint passes the gate.

Keeping more of the most sensitive units can only bring a checkpoint closer to the
baseline, so "passes" is taken as monotone in N and found by bisection over [0, max_n]:
about log2(max_n) + 2 quantize-and-evaluate rounds instead of max_n. The gate is noisy (a
few flipped items move a small suite by points), so the pick comes with the N - 1 verdict
and both go into the report with their comparisons: bisection has always evaluated N - 1
(it is the last failing bound), so the confirmation costs no extra round. Bisection cannot
see non-monotone noise (every N it tries above the pick passed by construction); judging
that needs the same N evaluated on another item sample, which the sweep does not do.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class KeepSearch:
    n: int | None                                     # smallest passing N; None: even max_n fails
    max_n: int
    evaluated: dict[int, bool] = field(default_factory=dict)   # every N tried -> passed, in order tried

    @property
    def n_minus_1_passes(self) -> bool | None:
        return None if not self.n else self.evaluated.get(self.n - 1)

    def summary(self) -> str:
        if self.n is None:
            return f"no N up to {self.max_n} passes the gate"
        if self.n == 0:
            return "N = 0: the base scheme passes as it is"
        return f"N = {self.n} passes and N - 1 = {self.n - 1} fails"


def search_keep(passes: Callable[[int], bool], max_n: int) -> KeepSearch:
    """Bisection for the smallest N in [0, max_n] with passes(N), then the N - 1 check."""
    result = KeepSearch(None, max_n)

    def check(n: int) -> bool:
        if n not in result.evaluated:
            result.evaluated[n] = passes(n)
        return result.evaluated[n]

    if not check(max_n):
        return result
    if check(0):
        result.n = 0
        return result
    failing, passing = 0, max_n   # invariant: passes(passing), not passes(failing)
    while passing - failing > 1:
        mid = (failing + passing) // 2
        if check(mid):
            passing = mid
        else:
            failing = mid
    result.n = passing
    return result
