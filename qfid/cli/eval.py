"""`qfid eval`: run suites on a model (HF transformers or an OpenAI-compatible server) and
store the run under reports/runs/NAME for `qfid compare`."""
from __future__ import annotations

from typing import Optional

import typer

from qfid.cli.options import DEVICE_OPT, DTYPE_OPT, MODEL_ARG
from qfid.errors import QfidError

HELP = """Evaluate a model on eval suites and store the run (manifest.json + per-item records) for compare/gate.

An interrupted run resumes: run the same command again and finished items are skipped.

Examples:

  qfid eval smollm2-135m --suite finance-mc,legal,general --name fp32

  qfid eval out/smollm2-awq --suite finance,legal,multilingual,general --name int4 --limit 200

  qfid eval out/smollm2-awq --suite finance-mc,legal --name int4-bf16 --dtype bfloat16

  qfid eval ./model --suite path/to/my_suite.yaml --name mine

  qfid eval my-model --backend openai --base-url http://localhost:8000/v1 --suite legal --name served

  qfid eval ./l8-awq --backend openai --base-url http://gpu-box:8000/v1 --suite finance,legal --name int4 --concurrency 64
"""


def eval_command(
    model: str = MODEL_ARG,
    suite: str = typer.Option(..., "--suite", "-s", help="Comma-separated suite names or suite.yaml paths."),
    name: str = typer.Option(..., "--name", "-n", help="Run name: results go to RUNS_DIR/NAME."),
    backend: str = typer.Option("engine", "--backend", "-b", help="engine (qfid's paged runtime) | hf | openai"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="openai backend: the server's /v1 URL."),
    limit: Optional[int] = typer.Option(None, "--limit", help="About N items per suite: a seeded sample of whole groups (parallel languages stay together), so at least N."),
    seed: int = typer.Option(0, "--seed", help="Seed for the --limit sample."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass (hf) or prompts per request (openai)."),
    concurrency: int = typer.Option(32, "--concurrency", help="openai backend: requests in flight."),
    max_retries: int = typer.Option(5, "--max-retries", help="openai backend: retries of a request on 429, 5xx, timeouts and dropped connections."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="openai backend: the model's tokenizer (folder or default model) for exact token-id prompts; default: the model argument when it is one."),
    dtype: str = DTYPE_OPT,
    device: str = DEVICE_OPT,
    top_k: int = typer.Option(10, "--top-k", help="Top-k next-token log-probs stored per answer token (for KL in compare); 0 to skip."),
    chat: bool = typer.Option(False, "--chat", help="Use the suite's chat prompt under the model's chat template."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Override the suites' generation length."),
    runs_dir: str = typer.Option("reports/runs", "--runs-dir", help="Where runs are stored."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of this name instead of resuming it."),
) -> None:
    from pathlib import Path

    from qfid.evals.backends import make_backend
    from qfid.evals.runner import RunOptions, evaluate_run
    from qfid.evals.store import RunStore
    from qfid.evals.suite import load_suites

    suites = load_suites(suite)  # first: a typo fails before a model is loaded
    remote = backend == "openai"
    options = RunOptions(model=model, limit=limit, seed=seed, top_k=top_k, chat=chat, max_tokens=max_tokens,
                         batch_items=_batch_items(batch_size, concurrency if remote else None))
    backend_options = {"batch_size": batch_size}
    if remote:
        backend_options |= _remote_options(model, base_url, concurrency, max_retries, tokenizer)
    else:
        backend_options |= {"dtype": _dtype(dtype), "device": device}
    runner_backend = make_backend(backend, model, **backend_options)
    store = RunStore(Path(runs_dir), name)
    with _progress(getattr(runner_backend, "stats", None)) as progress:
        results = evaluate_run(name, runner_backend, suites, store, options, overwrite, progress)
    _print_results(name, store.path, results)


def _batch_items(batch_size: int, concurrency: int | None) -> int:
    """Items handed to the backend at once (and stored together). A remote server gets
    enough to keep `concurrency` requests of `batch_size` prompts in flight, no more, so an
    interrupted run loses at most one such batch."""
    return max(1, batch_size * (concurrency or 2))


def _remote_options(model: str, base_url: str | None, concurrency: int, max_retries: int, tokenizer: str | None) -> dict:
    from qfid.evals.backends.openai import local_tokenizer

    if max_retries < 0:
        raise QfidError(f"--max-retries must be >= 0; got {max_retries}")
    return {"concurrency": concurrency, "max_retries": max_retries, "tokenizer": local_tokenizer(model, tokenizer)} | (
        {"base_url": base_url} if base_url else {})


def _dtype(name: str) -> str:
    from qfid.models.placement import DTYPE_NAMES

    if name not in DTYPE_NAMES:
        raise QfidError(f"--dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return name


def _progress(request_stats=None):
    """Items done, items/s and times; for a remote backend also its requests in flight and
    retries so far (read live, between the runner's batch updates)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class ItemsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.2f} items/s" if task.speed else "-- items/s", style="cyan")

    class Requests(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{request_stats.in_flight} in flight, {request_stats.retries} retries", style="magenta")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), ItemsPerSecond()]
    columns += [Requests()] if request_stats is not None else []
    return Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), speed_estimate_period=3600)  # batches can take minutes on CPU


def _print_results(name: str, path, results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {name}  ({path})")
    for column in ("suite", "items", "accuracy", "perplexity", "items/s"):
        table.add_column(column, justify="left" if column == "suite" else "right")
    for suite, entry in results.items():
        accuracy = f"{100 * entry['accuracy']:.1f}%" if "accuracy" in entry else "-"
        perplexity = f"{entry['perplexity']:.2f}" if "perplexity" in entry else "-"
        speed = f"{entry['items_per_s']:.2f}" if entry.get("items_per_s") else "-"
        table.add_row(suite, str(entry["items"]), accuracy, perplexity, speed)
    Console().print(table)
