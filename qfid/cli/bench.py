"""`qfid bench`: options -> workload + BenchSpec -> bench.harness.run_all -> a rich table and
optionally a JSON list of records, one per engine."""
from __future__ import annotations

import json
from typing import Optional

import typer

from qfid.cli.options import DEVICE_OPT, MODEL_ARG

HELP = """Replay one workload against the qfid engine and HF transformers, side by side.

Engines: qfid (paged continuous batching), hf-static (HF generate, left-padded batches of
--hf-batch), hf-cb (HF's own continuous batching, skipped with a note where it fails).
Every request gets exactly its drawn output length (EOS ignored). Each engine runs in its
own process, so peak RSS is its own. Wall time on a shared CPU is noisy: CPU seconds are
reported next to it.

Examples:

  qfid bench smollm2-135m --scheme bf16 --requests 64 --workload bursty

  qfid bench smollm2-135m --scheme awq-int4 --engines qfid,hf-static --json out/bench.json

  qfid bench out/smollm2-awq --workload uniform --rate 2 --prompt-len 32-256 --output-len 16-128
"""


def bench_command(
    model: str = MODEL_ARG,
    scheme: str = typer.Option("as-is", "--scheme", help="as-is (the model as given) | fp32 | bf16 | awq-int4 | fp8 (quantized once into the cache)."),
    workload: str = typer.Option("bursty", "--workload", help="bursty (all at t=0) | uniform (Poisson arrivals at --rate)."),
    requests: int = typer.Option(64, "--requests", "-n", help="Number of requests."),
    prompt_len: str = typer.Option("32-256", "--prompt-len", help="Prompt length range in tokens, LOW-HIGH."),
    output_len: str = typer.Option("16-128", "--output-len", help="Output length range in tokens, LOW-HIGH."),
    rate: float = typer.Option(4.0, "--rate", help="Requests per second for --workload uniform."),
    seed: int = typer.Option(0, "--seed", help="Seed of the workload draw."),
    prompt_source: str = typer.Option("text", "--prompt-source", help="text (bundled prose) | random (vocab ids)."),
    engines: str = typer.Option("qfid,hf-static,hf-cb", "--engines", help="Comma-separated engines to run."),
    hf_batch: int = typer.Option(16, "--hf-batch", help="Batch size of hf-static."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 | float16 (default: fp32 / bf16 for those schemes, else auto)."),
    device: str = DEVICE_OPT,
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads in every engine."),
    kv_cache_gb: float = typer.Option(1.0, "--kv-cache-gb", help="KV-cache budget (qfid and hf-cb)."),
    max_num_batched_tokens: int = typer.Option(2048, "--max-batched-tokens", help="Token budget of one step (qfid and hf-cb)."),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="One process per engine (clean peak RSS)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the records (one per engine) to this file."),
    speculative: Optional[str] = typer.Option(None, "--speculative", help="qfid engine: speculative decoding (ngram, or draft:PATH)."),
    num_speculative_tokens: int = typer.Option(4, "--num-speculative-tokens", help="Drafts per step with --speculative."),
    speculative_max_batch: int = typer.Option(8, "--speculative-max-batch", help="Speculate only while at most this many sequences run."),
) -> None:
    from qfid.bench.harness import BenchSpec, resolve_model, run_all
    from qfid.bench.workload import make_workload, parse_range
    from qfid.quant.formats import load_tokenizer

    model_dir, scheme_dtype = resolve_model(model, scheme)
    tokenizer = load_tokenizer(model_dir)
    draws = make_workload(tokenizer, requests, parse_range(prompt_len, "--prompt-len"),
                          parse_range(output_len, "--output-len"), seed, workload, rate, prompt_source)
    spec = BenchSpec(str(model_dir), dtype or scheme_dtype, device, threads, hf_batch, kv_cache_gb, max_num_batched_tokens,
                     speculative, num_speculative_tokens, speculative_max_batch)
    names = [name.strip() for name in engines.split(",") if name.strip()]
    results = run_all(names, spec, draws, isolate, progress=lambda name: typer.echo(f"running {name} ...", err=True))
    _print_table(results, f"{model} ({scheme}, {spec.dtype}), {workload}, {requests} requests, seed {seed}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump([result.record for result in results], f, indent=2)


ROWS = (("output tokens/s", "output_tokens_per_s", "{:.1f}"), ("requests/s", "requests_per_s", "{:.2f}"),
        ("TTFT p50", "ttft_p50_s", "{:.2f} s"), ("TTFT p99", "ttft_p99_s", "{:.2f} s"),
        ("TPOT p50", "tpot_p50_s", "{:.1f} ms", 1000), ("TPOT p99", "tpot_p99_s", "{:.1f} ms", 1000),
        ("wall", "wall_s", "{:.1f} s"), ("CPU", "cpu_s", "{:.1f} s"), ("CPU / wall", "cpu_per_wall", "{:.2f}"),
        ("load (incl. imports)", "load_s", "{:.1f} s"), ("peak RSS", "peak_rss_mb", "{:.0f} MB"),
        ("KV used at peak / reserved", None, None), ("KV waste at peak", "kv_waste_share", "{:.1%}"),
        ("KV waste, step mean", "kv_waste_share_mean", "{:.1%}"), ("preemptions", "preemptions", "{}"),
        ("spec. acceptance rate", "spec_acceptance_rate", "{:.1%}"),
        ("spec. tokens / verify step", "spec_tokens_per_verify_step", "{:.2f}"))


def _print_table(results, title: str) -> None:
    """Metrics as rows and engines as columns, so three engines fit an 80-column terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for result in results:
        table.add_column(result.record["engine"], justify="right")
    for row in ROWS:
        table.add_row(row[0], *(_cell(result.record, row) for result in results))
    console = Console()
    console.print(table)
    for result in results:
        if result.note:
            console.print(f"{result.record['engine']}: {result.note}")
    console.print("Timings are wall-clock on this machine's CPU, which may be shared: compare CPU seconds too. "
                  "KV waste = unused slots in the KV blocks sequences hold.")


def _cell(record: dict, row: tuple) -> str:
    if row[1] is None:
        if "kv_peak_used_mb" not in record:
            return "-"
        return f"{record['kv_peak_used_mb']:.1f} / {record['kv_reserved_mb']:.0f} MB"
    value = record.get(row[1])
    if value is None:
        return "-"
    scale = row[3] if len(row) > 3 else 1
    return row[2].format(value * scale)
