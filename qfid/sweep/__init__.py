"""`qfid sweep`: the cheapest setup that keeps a model's domain answers right.

Quantize several schemes (base schemes, and base schemes with their most sensitive layers
kept in FP8 or 16 bits), evaluate the baseline and every candidate on the suites, compare,
apply the gate, and recommend the smallest checkpoint that passes: per suite and overall,
with the Pareto front of size against fidelity. `qfid demo` is a sweep of the default model.

    schemes.py   the scheme list's syntax (`awq-int4+keep:8`, `+keep16:auto`, `@suite`)
    keep_search.py  `+keep:auto`: the smallest N that passes the gate, by bisection
    pareto.py    fidelity per candidate and the size/fidelity front
    run.py       the orchestration (resumable: finished checkpoints and runs are reused)
    report.py    the sweep's tables and plot, prepended to the comparison report
"""
