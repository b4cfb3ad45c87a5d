"""bench/quantize_scale.py's output: the runs table, new/old ratios, the targets, and the JSON
(machine, versions, date, every row), rewritten after each run so a long benchmark that is
interrupted still leaves what it measured."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

RATIO_KEYS = ("wall_s", "s_per_block", "user_s", "sys_s", "peak_rss_gb")


def ratios(rows: list[dict]) -> list[dict]:
    """new/old for each (model, scheme, layers) where both codes ran to completion."""
    done = {(r["model"], r["scheme"], r["layers"], r["code"]): r for r in rows if r.get("returncode") == 0}
    out = []
    for (model, scheme, layers, code), new in done.items():
        old = done.get((model, scheme, layers, "old"))
        if code == "new" and old:
            out.append({"model": model, "scheme": scheme, "layers": layers,
                        **{k: _div(new.get(k), old.get(k)) for k in RATIO_KEYS}})
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def machine_info() -> dict:
    """CPU model and core count (lscpu), memory, library versions: what the times depend on."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {"cpu_model": fields.get("Model name", "?").strip(), "cpu_cores": os.cpu_count(),
            "mem_total_gb": round(mem_total_gb(), 1), "torch": version("torch"),
            "transformers": version("transformers")}


def mem_total_gb() -> float:
    with open("/proc/meminfo") as f:
        return int(next(line.split()[1] for line in f if line.startswith("MemTotal:"))) / 2**20


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def render(rows: list[dict], ratio_rows: list[dict], targets: list[dict]) -> None:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)  # a log file gets the whole table
    console.print(_runs_table(rows))
    if ratio_rows:
        console.print(_ratio_table(ratio_rows))
    if targets:
        console.print(_targets_table(targets))


def _runs_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="qfid quantize at scale (one fresh process per run)")
    for col in ("model", "scheme", "layers", "code", "wall s", "s/block", "user s", "sys s", "sys/user",
                "peak RSS GB", "output GB", "status"):
        table.add_column(col, justify="left" if col in ("model", "scheme", "code", "status") else "right")
    for r in rows:
        table.add_row(r["model"], r["scheme"], str(r["layers"] or "-"), r["code"], _fmt(r.get("wall_s")),
                      _fmt(r.get("s_per_block"), 2), _fmt(r.get("user_s")), _fmt(r.get("sys_s")),
                      _fmt(r.get("sys_per_user"), 3), _fmt(r.get("peak_rss_gb"), 2), _fmt(r.get("output_gb"), 2),
                      _status(r))
    return table


def _status(row: dict) -> str:
    if row.get("skipped"):
        return f"n/a: {row['skipped']}"
    return row.get("error") or "ok"


def _ratio_table(ratio_rows: list[dict]):
    from rich.table import Table

    table = Table(title="new / old (pre-change d684acd), same benchmark")
    for col in ("model", "scheme", "layers", "wall", "s/block", "user", "sys", "peak RSS"):
        table.add_column(col, justify="left" if col in ("model", "scheme") else "right")
    for r in ratio_rows:
        table.add_row(r["model"], r["scheme"], str(r["layers"]), *(_fmt(r[k], 2) for k in RATIO_KEYS))
    return table


def _targets_table(targets: list[dict]):
    from rich.table import Table

    table = Table(title="issue 11 targets")
    for col in ("target", "measured", "limit", "met"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for t in targets:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "not measured"}[t["met"]]
        table.add_row(t["target"], t["note"] or _fmt(t["measured"], 3), _fmt(t["limit"], 2), met)
    return table


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
