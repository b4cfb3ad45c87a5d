"""Validated configuration objects. Each checks itself in __post_init__ so a bad value fails
at the boundary with one clear line instead of deep inside a quantizer."""
from __future__ import annotations

from dataclasses import dataclass, field

from qfid.errors import QfidError

SCHEMES = ("awq-int4", "rtn-int4", "fp8")
FORMATS = ("autoawq", "compressed-tensors")
FP8_WEIGHT_GRANULARITIES = ("channel", "tensor")
FP8_ACTIVATION_MODES = ("dynamic", "static")
KEEP_AS = ("fp8", "bf16")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise QfidError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(slots=True)
class QuantConfig:
    """What `qfid quantize` does. `group_size=None` picks the model's default (see
    `primitives.default_group_size`); `format=None` picks autoawq for INT4 and
    compressed-tensors for FP8 (the only format that can hold FP8).

    `keep` names Linears (full checkpoint names, without `.weight`) stored as `keep_as`
    instead of the scheme: FP8 per-channel (compressed-tensors only: one config group per
    scheme) or the source's 16-bit dtype (listed as not converted, so any format holds it).
    AWQ still searches and folds its scales through kept layers, so the block computes the
    same function; only their storage differs. The sweep's `+keep:N` fills it.

    `awq_search_from` names a qfid AWQ checkpoint whose saved search (scales, clips) is
    replayed instead of searching again: the same weights bit for bit without the search's
    cost, when only what is stored around them changes (kept layers, the format). The sweep
    derives its `+keep:N` checkpoints from the base's search this way."""

    scheme: str = "awq-int4"
    group_size: int | None = None
    format: str | None = None
    fp8_weights: str = "channel"
    fp8_activations: str = "dynamic"
    calib: str | None = None
    calib_samples: int = 16
    calib_seq_len: int = 512
    seed: int = 0
    awq_grid: int = 20
    awq_clip: bool = True
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])
    keep: list[str] = field(default_factory=list)
    keep_as: str = "fp8"
    awq_search_from: str | None = None

    def __post_init__(self) -> None:
        _one_of("scheme", self.scheme, SCHEMES)
        _one_of("keep precision", self.keep_as, KEEP_AS)
        keeps_fp8 = bool(self.keep) and self.keep_as == "fp8"
        if keeps_fp8 and self.scheme == "fp8":
            raise QfidError("keeping layers in FP8 needs an INT4 scheme; keep them in bf16 instead")
        if self.format is None:
            self.format = "compressed-tensors" if self.scheme == "fp8" or keeps_fp8 else "autoawq"
        if keeps_fp8 and self.format == "autoawq":
            raise QfidError("the autoawq format holds INT4 only; layers kept in FP8 need --format compressed-tensors")
        _one_of("format", self.format, FORMATS)
        if self.scheme == "fp8" and self.format == "autoawq":
            raise QfidError("the autoawq format holds INT4 only; use --format compressed-tensors for fp8")
        _one_of("fp8 weight granularity", self.fp8_weights, FP8_WEIGHT_GRANULARITIES)
        _one_of("fp8 activations", self.fp8_activations, FP8_ACTIVATION_MODES)
        if self.group_size is not None and (self.group_size < 8 or self.group_size & (self.group_size - 1)):
            raise QfidError(f"group size must be a power of two >= 8; got {self.group_size}")
        if self.calib_samples < 1 or self.calib_seq_len < 8:
            raise QfidError("calibration needs at least 1 sample of at least 8 tokens")
        if self.awq_search_from is not None and self.scheme != "awq-int4":
            raise QfidError(f"a saved AWQ search can only be replayed by awq-int4, not {self.scheme}")
        if not 2 <= self.awq_grid <= 100:
            raise QfidError(f"awq grid must be between 2 and 100 points; got {self.awq_grid}")

    @property
    def is_int4(self) -> bool:
        return self.scheme in ("awq-int4", "rtn-int4")
