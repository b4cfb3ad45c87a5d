"""Render a QuantResult: the table `qfid quantize` ends with."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from qfid.quant.pipeline import QuantResult


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def summary_rows(result: QuantResult) -> list[tuple[str, str]]:
    cfg = result.config
    bits = "4 (int, zero point)" if cfg.is_int4 else f"8 (fp8 e4m3, {cfg.fp8_weights} weights, {cfg.fp8_activations} activations)"
    group = "-" if result.group_size is None else (
        f"{result.group_size}" + (" (auto: largest power of two dividing every width)" if result.group_size_auto and result.group_size != 128 else ""))
    drift = result.ppl_after - result.ppl_before
    return [
        ("model", result.source),
        ("scheme / format", f"{cfg.scheme} / {cfg.format}"),
        ("layers quantized", str(result.layers_quantized)),
        ("bits", bits),
        ("group size", group),
        ("calibration", result.calib_description),
        ("device / activations", f"{result.device} / {result.activations_on}"),
        ("RTN fallbacks", f"{len(result.fallbacks)} (experts with too few calibration tokens; see qfid_quant.json)" if result.fallbacks else "none"),
        ("linear weights fp16 -> quantized", f"{_mib(result.linear_bytes_fp16)} -> {_mib(result.linear_bytes_quantized)} ({result.linear_ratio:.3f}x)"),
        ("checkpoint on disk", _mib(result.checkpoint_bytes)),
        ("perplexity (calib samples) before -> after", f"{result.ppl_before:.3f} -> {result.ppl_after:.3f} ({drift:+.3f})"),
        ("wall time", f"{result.wall_s:.1f} s (" + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()) + ")"),
        ("output", str(result.output_dir)),
    ]


def print_summary(result: QuantResult, console: Console | None = None) -> None:
    table = Table(title="qfid quantize", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in summary_rows(result):
        table.add_row(key, value)
    (console or Console()).print(table)
