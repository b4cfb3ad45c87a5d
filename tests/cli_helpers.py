"""Run the qfid CLI in-process through its real error boundary (`qfid.cli.app.main`)."""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class CliResult:
    exit_code: int
    out: str
    err: str


def run_cli(args: list[str], capsys, monkeypatch) -> CliResult:
    from qfid.cli.app import main

    monkeypatch.setattr(sys, "argv", ["qfid", *[str(a) for a in args]])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)
