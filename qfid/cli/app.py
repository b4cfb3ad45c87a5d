"""Wires the commands; each lives in its own module and imports heavy libraries lazily.

`main()` is the one error boundary: a QfidError prints `error: <one line>` and exits with
its code; any other exception prints one line too, with the traceback under QFID_DEBUG=1.
"""
from __future__ import annotations

import os
import sys

import typer

from qfid.cli import demo, models, quantize, suites, sweep
from qfid.cli import eval as eval_cli
from qfid.cli import compare, gate, report
from qfid.cli import bench, generate, serve
from qfid.errors import QfidError

app = typer.Typer(
    name="qfid",
    help="Quantize LLMs (AWQ INT4, RTN INT4, FP8) and prove on your domain that they still work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("quantize", help=quantize.HELP)(quantize.quantize_command)
app.command("models", help=models.HELP)(models.models_command)
app.command("demo", help=demo.HELP)(demo.demo_command)
app.command("sweep", help=sweep.HELP)(sweep.sweep_command)
app.add_typer(suites.app, name="suites", help=suites.HELP)
app.command("eval", help=eval_cli.HELP)(eval_cli.eval_command)
app.command("compare", help=compare.HELP)(compare.compare_command)
app.command("gate", help=gate.HELP)(gate.gate_command)
app.command("report", help=report.HELP)(report.report_command)
app.command("serve", help=serve.HELP)(serve.serve_command)
app.command("generate", help=generate.HELP)(generate.generate_command)
app.command("bench", help=bench.HELP)(bench.bench_command)


def main() -> None:
    try:
        app(standalone_mode=False)
    except QfidError as exc:
        _fail(str(exc), exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None) if isinstance(exc, typer.Exit) else exc.code
        sys.exit(code or 0)
    except typer.Abort:
        _fail("aborted", 130)
    except Exception as exc:  # noqa: BLE001 - the boundary: one line unless debugging
        import click

        vendored = getattr(getattr(typer, "_click", click), "ClickException")  # newer typer bundles its own click
        if isinstance(exc, (click.ClickException, vendored)):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("QFID_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc} (set QFID_DEBUG=1 for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
