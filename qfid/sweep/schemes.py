"""The sweep's scheme list: `BASE[+keep:N|+keep16:N|+keep:auto|+keep16:auto][@suite]`.

BASE is one of the uniform schemes (`awq-int4`, `rtn-int4`, `fp8`: FP8 per-channel weights
with dynamic activations, what vLLM serves best). `+keep:N` keeps the N most sensitive fused
units in FP8 (an INT4 base only), `+keep16:N` in the source's 16-bit dtype; `auto` picks the
smallest N that passes the gate. `@suite` calibrates on the sweep's domain suites instead of
the built-in corpus (`--calib suite:...`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from qfid.config import QuantConfig
from qfid.errors import QfidError

BASES = {
    "awq-int4": {"scheme": "awq-int4"},
    "rtn-int4": {"scheme": "rtn-int4"},
    "fp8": {"scheme": "fp8", "fp8_weights": "channel", "fp8_activations": "dynamic"},
}
KEEP_KINDS = {"keep": "fp8", "keep16": "bf16"}
SUITE_CALIB = "@suite"
_SYNTAX = re.compile(r"^(?P<base>[a-z0-9-]+)(?:\+(?P<kind>keep16|keep):(?P<n>auto|\d+))?(?P<calib>@suite)?$")


@dataclass(frozen=True)
class SweepScheme:
    name: str                  # as the user wrote it: the run's and the report's label
    base: str
    keep_as: str | None = None   # "fp8" | "bf16" when layers are kept
    keep_n: int | None = None    # None with auto
    auto: bool = False
    suite_calib: bool = False

    @property
    def folder(self) -> str:
        """A folder name for the checkpoint and the run (no ':' on any filesystem)."""
        return self.name.replace(":", "-").replace("@", "_")

    def with_n(self, n: int) -> "SweepScheme":
        """The fixed-N scheme an `auto` search evaluates."""
        kind = "keep" if self.keep_as == "fp8" else "keep16"
        name = f"{self.base}+{kind}:{n}" + (SUITE_CALIB if self.suite_calib else "")
        return SweepScheme(name, self.base, self.keep_as, n, False, self.suite_calib)

    def quant_config(self, calib: str | None, keep: list[str] = ()) -> QuantConfig:
        return QuantConfig(**BASES[self.base], calib=calib, keep=list(keep), keep_as=self.keep_as or "fp8")


def parse_schemes(text: str) -> list[SweepScheme]:
    """Comma-separated schemes; every mistake is one clear line."""
    schemes = [_parse_one(part.strip()) for part in text.split(",") if part.strip()]
    if not schemes:
        raise QfidError("--schemes names no scheme")
    names = [s.name for s in schemes]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise QfidError(f"scheme {duplicate} is listed twice")
    return schemes


def _parse_one(text: str) -> SweepScheme:
    match = _SYNTAX.match(text)
    if not match or match["base"] not in BASES:
        raise QfidError(f"unknown scheme {text!r}: use BASE[+keep:N|+keep16:N|+keep:auto][@suite] "
                        f"with BASE one of {', '.join(BASES)}")
    kind, n = match["kind"], match["n"]
    keep_as = KEEP_KINDS[kind] if kind else None
    if keep_as == "fp8" and match["base"] == "fp8":
        raise QfidError(f"{text}: an FP8 model keeps layers in 16 bits (+keep16:N), not FP8")
    return SweepScheme(text, match["base"], keep_as, None if n in (None, "auto") else int(n), n == "auto",
                       bool(match["calib"]))
