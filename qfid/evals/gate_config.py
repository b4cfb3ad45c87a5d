"""Gate thresholds: `[tool.qfid.gate]` in pyproject.toml or `[gate]` in a qfid.toml.

    [tool.qfid.gate]
    max_accuracy_drop = 5.0       # points (absolute), default for every suite, category and language
    max_flip_rate = 0.15          # share of a suite's items that flipped either way
    max_mean_kl = 0.1             # nats per answer token, mean over a suite
    alpha = 0.05                  # significance level of the accuracy-drop test
    require_significance = true   # a drop breaks the gate only when it is also significant
    max_perplexity_increase = 10  # percent, perplexity suites; optional (unset: not gated)

    [tool.qfid.gate.suite]        # per-name max_accuracy_drop overrides; "*" = the level's default
    finance = 3.0
    [tool.qfid.gate.category]
    "*" = 8.0                     # categories are small: allow more before failing
    "legal/negation_exceptions" = 4.0   # suite/category, or a bare category name for every suite
    [tool.qfid.gate.lang]
    sw = 10.0                     # a bare language, or suite/lang

Why `require_significance` defaults to true: with a few dozen items per category, one or two
unlucky flips exceed a 5-point limit by chance, and a gate that fails on noise gets switched
off. So a drop breaks the gate only when it exceeds the limit *and* McNemar's test rejects
"no change" at `alpha` (and the bootstrap CI lies below zero); a drop over the limit that is
not significant is reported as inconclusive, not as a pass. Set it to false to gate on the
point estimate alone.

Lookup: `--config FILE` (pyproject.toml or any other TOML file with a `[gate]` table), else
./qfid.toml, else ./pyproject.toml's `[tool.qfid.gate]`, else the defaults here. Unknown
keys and wrong types are errors (exit 2), never ignored: a typo must not loosen a gate.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from qfid.errors import QfidError

OVERRIDE_LEVELS = ("suite", "category", "lang")
LEVEL_DEFAULT = "*"
NUMBER_RANGES = {  # key -> (low, high, unit for messages)
    "max_accuracy_drop": (0.0, 100.0, "points"),
    "max_flip_rate": (0.0, 1.0, "a fraction"),
    "max_mean_kl": (0.0, float("inf"), "nats"),
    "alpha": (1e-9, 0.5, "a probability"),
    "max_perplexity_increase": (0.0, float("inf"), "percent"),
}
BOOL_KEYS = ("require_significance",)


@dataclass(frozen=True)
class GateConfig:
    max_accuracy_drop: float = 5.0
    max_flip_rate: float = 0.15
    max_mean_kl: float = 0.1
    alpha: float = 0.05
    require_significance: bool = True
    max_perplexity_increase: float | None = None
    suite: dict = field(default_factory=dict)
    category: dict = field(default_factory=dict)
    lang: dict = field(default_factory=dict)
    source: str = "built-in defaults"

    def accuracy_drop_limit(self, level: str, name: str) -> float:
        """Points: the most specific of `suite/name`, bare `name`, the level's "*", the global default."""
        overrides = getattr(self, level)
        bare = name.split("/", 1)[1] if "/" in name else name
        for key in (name, bare, LEVEL_DEFAULT):
            if key in overrides:
                return overrides[key]
        return self.max_accuracy_drop


def load_gate_config(config: str | Path | None = None, cwd: str | Path = ".") -> GateConfig:
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise QfidError(f"gate config {path} does not exist")
        return parse_gate_table(_gate_table(path, required=True), _where(path))
    for name in ("qfid.toml", "pyproject.toml"):
        path = Path(cwd) / name
        if path.is_file():
            table = _gate_table(path, required=False)
            if table is not None:
                return parse_gate_table(table, _where(path))
    return GateConfig()


def parse_gate_table(table: dict, where: str = "[gate]") -> GateConfig:
    """Validate a gate table into a GateConfig; every problem is one clear QfidError."""
    if not isinstance(table, dict):
        raise QfidError(f"{where} must be a table of thresholds")
    known = tuple(NUMBER_RANGES) + BOOL_KEYS + OVERRIDE_LEVELS
    values: dict = {"source": where}
    for key, value in table.items():
        if key not in known:
            raise QfidError(f"{where}: unknown key {key!r}{_suggestion(key, known)}; known keys: {', '.join(known)}")
        if key in BOOL_KEYS:
            values[key] = _boolean(value, f"{where} {key}")
        elif key in NUMBER_RANGES:
            values[key] = _number(value, f"{where} {key}", *NUMBER_RANGES[key])
        else:
            values[key] = _overrides(value, f"{where}.{key}")
    return GateConfig(**values)


def _gate_table(path: Path, required: bool) -> dict | None:
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("qfid", {}).get("gate")
    else:
        table = data.get("gate")
    if table is None and required:
        raise QfidError(f"{path} has no {'[tool.qfid.gate]' if path.name == 'pyproject.toml' else '[gate]'} table")
    return table


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise QfidError(f"{path} is not valid TOML: {exc}") from None


def _where(path: Path) -> str:
    return f"{path} [tool.qfid.gate]" if path.name == "pyproject.toml" else f"{path} [gate]"


def _number(value, what: str, low: float, high: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QfidError(f"{what} must be a number ({unit}); got {value!r}")
    if not low <= value <= high:
        raise QfidError(f"{what} must be between {low:g} and {high:g} ({unit}); got {value!r}")
    return float(value)


def _boolean(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise QfidError(f"{what} must be true or false; got {value!r}")
    return value


def _overrides(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise QfidError(f"{where} must be a table of name = max accuracy drop in points; got {value!r}")
    low, high, unit = NUMBER_RANGES["max_accuracy_drop"]
    return {str(name): _number(limit, f"{where} {name!r}", low, high, unit) for name, limit in value.items()}


def _suggestion(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
