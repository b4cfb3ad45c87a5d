"""`qfid models`: the default model(s), whether they are cached, and where."""
from __future__ import annotations

HELP = """List the embedded default model(s) and where they are cached.

Example:  qfid models
"""


def models_command() -> None:
    from rich.console import Console
    from rich.table import Table

    from qfid.models.default import DEFAULT_MODELS, model_cache_path

    table = Table(title="qfid default models")
    for col in ("name", "source", "license", "cached", "path"):
        table.add_column(col)
    for spec in DEFAULT_MODELS.values():
        path = model_cache_path(spec.name)
        cached = "yes" if (path / "config.json").is_file() else "no (converted on first use)"
        table.add_row(spec.name, f"{spec.package}=={spec.version} ({spec.hub_id})", spec.license, cached, str(path))
    Console().print(table)
