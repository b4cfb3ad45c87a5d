"""`--backend openai` throughput: is the client ever the bottleneck, and what does scoring
through `qfid serve` cost next to the engine backend?

1. mock: a loopback server (its own process) that answers every /v1/completions request
   after a fixed latency. With c requests in flight the ideal is c / latency requests/s; the
   client keeps up when items/s stays near that up to 256 in flight.
2. serve: `qfid serve` on the default model (its own process) and a choice suite scored
   through it at --concurrency 1, 8 and 32 (one prompt a request), next to the engine
   backend on the same items in this process. Both get the same torch thread count, and
   they run one after the other, never at the same time.

Over httpx, the client spends about 1.5 ms of CPU a request: at 0.05 s latency and 256 in
flight (5,120 requests/s ideal) it is the bottleneck on a small machine; at 1 s it is not.

    python bench/openai_backend.py [--part mock,serve] [--latency 1.0,0.05] [--limit 24] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package transformers imports: drop this folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MOCK_CONCURRENCY = (1, 8, 32, 64, 128, 256)
SERVE_CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. a fixed-latency mock server ---------------------------------------------------------

def mock_server(port: int, latency_s: float) -> None:
    """Minimal HTTP/1.1 keep-alive server: /v1/models, and /v1/completions after `latency_s`."""
    models = json.dumps({"data": [{"id": "mock", "max_model_len": 2048}]}).encode()

    async def connection(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:")), 0)
                body = await reader.readexactly(length)
                if lines[0].startswith("GET"):
                    answer = models
                else:
                    await asyncio.sleep(latency_s)
                    prompts = json.loads(body)["prompt"]
                    count = len(prompts) if isinstance(prompts, list) and not isinstance(prompts[0], int) else 1
                    answer = json.dumps({"choices": [{"index": i, "text": " 42"} for i in range(count)]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(connection, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def wait_until_up(url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout_s:.0f} s")


def bench_mock(latency_s: float, rounds: int) -> list[dict]:
    from qfid.evals.backends.openai import OpenAIBackend

    port = free_port()
    process = multiprocessing.get_context("fork").Process(target=mock_server, args=(port, latency_s), daemon=True)
    process.start()
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", 20)
        rows = []
        for concurrency in MOCK_CONCURRENCY:
            backend = OpenAIBackend("mock", base_url=f"http://127.0.0.1:{port}/v1", batch_size=1, concurrency=concurrency)
            prompts = [f"question {i}" for i in range(concurrency * rounds)]
            backend.generate(prompts[:concurrency], 4, [])  # warm-up: the connections
            start = time.perf_counter()
            backend.generate(prompts, 4, [])
            seconds = time.perf_counter() - start
            ideal = concurrency / latency_s
            rows.append({"concurrency": concurrency, "requests": len(prompts), "seconds": round(seconds, 3),
                         "items_per_s": round(len(prompts) / seconds, 1), "ideal_items_per_s": round(ideal, 1),
                         "fraction_of_ideal": round(len(prompts) / seconds / ideal, 3)})
            print(rows[-1], flush=True)
        return rows
    finally:
        process.terminate()


# -- 2. qfid serve on the default model vs the engine backend --------------------------------

def run_suite(backend, suite_name: str, limit: int, batch_items: int) -> tuple[float, int]:
    """(seconds, items) for one fresh run of the suite's --limit selection."""
    from qfid.evals.runner import RunOptions, build_manifest, run_suites
    from qfid.evals.store import RunStore
    from qfid.evals.suite import load_suites

    suites = load_suites(suite_name)
    options = RunOptions(model="bench", limit=limit, top_k=10, batch_items=batch_items)
    with tempfile.TemporaryDirectory() as runs:
        store = RunStore(Path(runs), "bench")
        store.open(build_manifest("bench", backend, suites, options))
        start = time.perf_counter()
        results = run_suites(backend, suites, store, options)
        return time.perf_counter() - start, sum(entry["items"] for entry in results.values())


def bench_serve(model: str, suite: str, limit: int, threads: int) -> dict:
    import torch

    from qfid.cli.eval import _batch_items
    from qfid.evals.backends.engine import EngineBackend
    from qfid.evals.backends.openai import OpenAIBackend, local_tokenizer

    port = free_port()
    command = [sys.executable, "-m", "qfid.cli.app", "serve", model, "--port", str(port), "--threads", str(threads),
               "--served-name", "bench"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", 300)
        tokenizer = local_tokenizer(model, None)
        for concurrency in SERVE_CONCURRENCY:
            backend = OpenAIBackend("bench", base_url=f"http://127.0.0.1:{port}/v1", batch_size=1,
                                    concurrency=concurrency, tokenizer=tokenizer)
            seconds, items = run_suite(backend, suite, limit, _batch_items(1, concurrency))
            rows.append({"backend": "openai (qfid serve)", "concurrency": concurrency, "items": items,
                         "seconds": round(seconds, 2), "items_per_s": round(items / seconds, 3)})
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    torch.set_num_threads(threads)
    engine = EngineBackend.from_model(model)
    seconds, items = run_suite(engine, suite, limit, _batch_items(8, None))
    rows.append({"backend": "engine", "concurrency": None, "items": items, "seconds": round(seconds, 2),
                 "items_per_s": round(items / seconds, 3)})
    print(rows[-1], flush=True)
    return {"model": model, "suite": suite, "limit": limit, "threads": threads, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="mock,serve")
    parser.add_argument("--latency", default="1.0,0.05", help="mock server latencies per request, seconds (comma-separated)")
    parser.add_argument("--rounds", type=int, default=4, help="mock: requests = concurrency x rounds")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="finance-mc")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="bench/results/openai-backend.json")
    args = parser.parse_args()
    parts = set(args.part.split(","))
    out = {"cpu_count": os.cpu_count()}
    if "mock" in parts:
        out["mock"] = [{"latency_s": float(latency), "rows": bench_mock(float(latency), args.rounds)}
                       for latency in args.latency.split(",")]
    if "serve" in parts:
        out["serve"] = bench_serve(args.model, args.suite, args.limit, args.threads)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
