"""`qfid serve`: options -> EngineConfig fields -> engine.server.serve (blocks until Ctrl-C)."""
from __future__ import annotations

from typing import Optional

import typer

from qfid.cli.options import DEVICE_OPT, DTYPE_OPT, MODEL_ARG
from qfid.errors import QfidError

HELP = """Serve a model (fp, or a qfid INT4 / FP8 checkpoint) over an OpenAI-compatible HTTP API.

Routes: /v1/completions, /v1/chat/completions (SSE streaming with "stream": true),
/v1/models, /health, /metrics (Prometheus). Binds 127.0.0.1 unless --host says otherwise.
Scoring requests as vLLM answers them: "echo": true with "logprobs": k (and "max_tokens": 0
to score the prompt alone), prompts as text or token ids. With --api-key (or QFID_API_KEY)
every /v1 route needs "Authorization: Bearer KEY".

Examples:

  qfid serve smollm2-135m

  qfid serve out/smollm2-awq --port 8000 --dtype bfloat16 --threads 2

  QFID_API_KEY=secret qfid serve smollm2-135m --host 0.0.0.0

  curl localhost:8000/v1/completions -H 'content-type: application/json' \\
       -d '{"prompt": "The capital of France is", "max_tokens": 32, "stream": true}'
"""


def serve_command(
    model: str = MODEL_ARG,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    served_name: Optional[str] = typer.Option(None, "--served-name", help="Model name clients send (default: the folder or model name)."),
    dtype: str = DTYPE_OPT,
    device: str = DEVICE_OPT,
    kv_cache_gb: float = typer.Option(1.0, "--kv-cache-gb", help="Memory for the paged KV cache on a CPU."),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization", help="Share of GPU memory for the model, its largest step and the KV cache."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="Most sequences in one batch."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="No CUDA graphs (GPU) or captured C++ step (CPU) for decode steps."),
    max_num_batched_tokens: int = typer.Option(2048, "--max-batched-tokens", help="Token budget of one step (prefill is chunked to fit)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Context limit (default: the model's)."),
    max_pending: int = typer.Option(1024, "--max-pending", help="Requests in flight before new ones get 429."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads (default: torch's choice)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QFID_API_KEY", show_envvar=True, show_default=False,
                                          help="Require 'Authorization: Bearer KEY' on /v1 routes."),
    max_logprobs: int = typer.Option(20, "--max-logprobs", help="Most logprobs a request may ask for (larger gets 400)."),
    speculative: Optional[str] = typer.Option(None, "--speculative", help="Speculative decoding: ngram (prompt lookup) or draft:PATH (a smaller model sharing the tokenizer)."),
    num_speculative_tokens: int = typer.Option(4, "--num-speculative-tokens", help="Drafts per step with --speculative."),
    speculative_max_batch: int = typer.Option(8, "--speculative-max-batch", help="Speculate only while at most this many sequences run."),
) -> None:
    try:
        from qfid.engine.server import serve
    except ImportError as exc:
        raise QfidError(f"serving needs {exc.name}, a qfid dependency missing from this environment: "
                        "reinstall qfid (make install)") from None
    serve(model, host=host, port=port, served_name=served_name, max_pending=max_pending, api_key=api_key,
          max_logprobs=max_logprobs, dtype=dtype, device=device, gpu_memory_utilization=gpu_memory_utilization,
          kv_cache_gb=kv_cache_gb, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
          max_model_len=max_model_len, num_threads=threads, enforce_eager=enforce_eager, speculative=speculative,
          num_speculative_tokens=num_speculative_tokens, speculative_max_batch=speculative_max_batch)
