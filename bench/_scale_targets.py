"""Issue 11's CPU targets ("What must be shown"), checked against one benchmark's rows.

Each target is a record: what it asks, the measured value, the limit, and `met` (true,
false, or null when that run was not part of this benchmark). A run that failed meets
nothing; its error is the note. Times are only ever compared as ratios against the
pre-change code measured in the same benchmark.
"""
from __future__ import annotations

RSS_LIMIT_GB = 4.0
DEPTH_GROWTH_GB = 0.5
AWQ_BLOCK_RATIO = 0.5
AWQ_SYS_SHARE = 0.05
DEFAULT_MODEL_RSS_GB = {"awq": 1.7, "fp8": 1.2}
DEFAULT_MODEL_WALL_RATIO = 1.0


class Rows:
    """Look-ups into the benchmark's rows and ratios by (model, scheme, layers, code)."""

    def __init__(self, rows: list[dict], ratios: list[dict]):
        self.rows, self.ratios = rows, ratios

    def find(self, model: str, scheme: str, code: str, layers: int | None = None) -> dict | None:
        for row in self.rows:
            if (row["model"], row["scheme"], row["code"]) == (model, scheme, code) and layers in (None, row["layers"]):
                return row
        return None

    def ratio(self, model: str, scheme: str, layers: int | None = None) -> dict | None:
        for r in self.ratios:
            if (r["model"], r["scheme"]) == (model, scheme) and layers in (None, r["layers"]):
                return r
        return None


def target(text: str, limit: float, value: float | None, note: str | None = None) -> dict:
    met = None if value is None and note is None else (value is not None and value <= limit)
    return {"target": text, "limit": limit, "measured": value, "met": met, "note": note}


def _value(row: dict | None, key: str) -> tuple[float | None, str | None]:
    """A measured figure of a run, or why there is none (a failed run, or no run)."""
    if row is None:
        return None, None
    if row.get("error"):
        return None, row["error"]
    return row.get(key), None


def _ratio(rows: Rows, model: str, scheme: str, layers: int | None, key: str) -> tuple[float | None, str | None]:
    """A new/old ratio, or the error of whichever run failed (neither: not measured)."""
    ratio = rows.ratio(model, scheme, layers)
    if ratio is not None:
        return ratio[key], None
    notes = [_value(rows.find(model, scheme, code, layers), key)[1] for code in ("new", "old")]
    return None, next((n for n in notes if n), None)


def _peak(rows: Rows, model: str, scheme: str, layers: int) -> tuple[float | None, str | None]:
    return _value(rows.find(model, scheme, "new", layers), "peak_rss_gb")


def depth_growth(rows: Rows, model: str, scheme: str, shallow: int, deep: int) -> dict:
    (low, low_note), (high, high_note) = _peak(rows, model, scheme, shallow), _peak(rows, model, scheme, deep)
    growth = None if low is None or high is None else high - low
    return target(f"{scheme}: peak RSS at {deep} layers <= at {shallow} layers + {DEPTH_GROWTH_GB} GB (growth, GB)",
                  DEPTH_GROWTH_GB, growth, low_note or high_note)


def scale_targets(rows: Rows, synth: str) -> list[dict]:
    """The synthetic-checkpoint targets (8B widths, 2/8/32 layers)."""
    out = []
    for scheme in ("rtn", "fp8"):
        out.append(target(f"{scheme}: 32 layers complete with peak RSS <= {RSS_LIMIT_GB} GB",
                          RSS_LIMIT_GB, *_peak(rows, synth, scheme, 32)))
    out += [depth_growth(rows, synth, "rtn", 8, 32), depth_growth(rows, synth, "fp8-static", 8, 32),
            depth_growth(rows, synth, "awq", 2, 8)]
    awq2 = rows.find(synth, "awq", "new", 2)
    out.append(target(f"awq, 2 layers: s/block new/old <= {AWQ_BLOCK_RATIO}", AWQ_BLOCK_RATIO,
                      *_ratio(rows, synth, "awq", 2, "s_per_block")))
    out.append(target(f"awq, 2 layers: system time <= {AWQ_SYS_SHARE:.0%} of user time", AWQ_SYS_SHARE,
                      *_value(awq2, "sys_per_user")))
    out.append(target(f"awq, 2 layers: peak RSS <= {RSS_LIMIT_GB} GB", RSS_LIMIT_GB, *_value(awq2, "peak_rss_gb")))
    return out


def default_model_targets(rows: Rows, model: str) -> list[dict]:
    """The default-model targets: peak RSS against the peers' figures, wall time vs pre-change."""
    out = []
    for scheme, limit in DEFAULT_MODEL_RSS_GB.items():
        out.append(target(f"{model} {scheme}: peak RSS <= {limit} GB", limit,
                          *_value(rows.find(model, scheme, "new"), "peak_rss_gb")))
        out.append(target(f"{model} {scheme}: wall new/old <= {DEFAULT_MODEL_WALL_RATIO}", DEFAULT_MODEL_WALL_RATIO,
                          *_ratio(rows, model, scheme, None, "wall_s")))
    return out
