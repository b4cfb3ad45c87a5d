"""Issue #12's GPU check, one short script for a lent GPU machine (at most ~6 minutes; run it
before the quantize check when both are due):

1. correctness on CUDA: greedy tokens of 16 concurrent requests equal HF `generate` in fp32
   on the tiny Llama and the tiny Mixtral, with `torch.cuda.set_sync_debug_mode("error")`
   over every engine step except the sampler's read of the token ids; prompt logprobs of
   the bf16 engine within 0.02 nats of HF's bf16 forward; the engine's CUDA test files
   (Triton decode through the engine, the device recorder) under pytest;
2. `qfid bench` in bf16 (qfid vs HF static vs HF continuous batching, same GPU, same bursty
   workload) on a random checkpoint of the default model's shape (SmolLM2-135M);
3. batch-1 decode and bursty throughput of a Llama-3-8B-shaped model in bf16 and RTN INT4,
   its random weights drawn straight in GPU memory (qfid.testing.synthetic_runtime).
   The INT4 roofline: INT4 bytes per token (packed weights, scales, zeros, the bf16 head
   and embedding row) over the copy bandwidth measured here.

Writes $OUT/engine-gpu.json (or --out). Imports nothing the GPU machine lacks. `--smoke` runs
every part at toy sizes on whatever device there is (how CI-less machines check the script).

    python bench/engine_gpu_check.py --out "$OUT/engine-gpu.json"
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# bench/ holds a kernels.py, which transformers would take for the `kernels` hub package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def sync_errors():
    """Any host-device synchronisation raises, except inside the sampler (reading token ids)."""
    if DEVICE != "cuda":
        yield
        return
    from qfid.engine import model_runner

    original = model_runner.ModelRunner._sample

    def sample_allowing_sync(*args):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return original(*args)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    model_runner.ModelRunner._sample = staticmethod(sample_allowing_sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
        model_runner.ModelRunner._sample = staticmethod(original)


def _tiny(kind: str, root: Path) -> Path:
    from qfid.testing.tiny import make_tiny_llama, make_tiny_mixtral

    path = root / kind
    if not (path / "config.json").is_file():
        (make_tiny_llama if kind == "llama" else make_tiny_mixtral)(path)
    return path


def check_correctness(root: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from qfid import LLM, SamplingParams

    results = {}
    g = torch.Generator().manual_seed(0)
    for kind in ("llama", "mixtral"):
        path = _tiny(kind, root)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE).eval()
        hf.generation_config.eos_token_id = None
        prompts = [torch.randint(3, hf.config.vocab_size, (int(n),), generator=g).tolist()
                   for n in torch.randint(4, 120, (16,), generator=g)]
        llm = LLM(path, dtype="float32", device=DEVICE, num_kv_blocks=128, max_num_batched_tokens=256)
        params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
        with sync_errors():
            outputs = llm.generate(prompts, params)
        equal = 0
        for prompt, output in zip(prompts, outputs):
            want = hf.generate(torch.tensor([prompt], device=DEVICE), max_new_tokens=24, do_sample=False,
                               pad_token_id=0)[0, len(prompt):].tolist()
            equal += output.token_ids == want
        bf16 = LLM(path, dtype="bfloat16", device=DEVICE, num_kv_blocks=128)
        hf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(DEVICE).eval()
        worst = 0.0
        for prompt in prompts[:4]:
            (out,) = bf16.generate([prompt], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0))
            with torch.no_grad():
                ref = hf16(torch.tensor([prompt], device=DEVICE)).logits[0].float().log_softmax(-1)
            for p in range(1, len(prompt)):
                worst = max(worst, abs(out.prompt_logprobs[p][prompt[p]] - ref[p - 1, prompt[p]].item()))
        results[kind] = {"greedy_equal": f"{equal}/16", "attention": llm.engine.model_runner.attention.name,
                         "bf16_prompt_logprob_max_abs_diff": round(worst, 5),
                         "targets": {"greedy_all_equal": equal == 16, "bf16_logprobs_within_0.02": worst <= 0.02}}
    return results


@torch.inference_mode()
def check_graphs(root: Path) -> dict:
    """Every captured bucket, full and with padding rows: the graph's hidden states equal the
    eager forward's on the same staged decode step (bit for bit: the same kernels run)."""
    from qfid import LLM, SamplingParams

    path = _tiny("llama", root)
    results = {}
    for dtype in ("float32", "bfloat16"):
        llm = LLM(path, dtype=dtype, device=DEVICE, num_kv_blocks=512, max_num_seqs=64, max_model_len=256)
        engine, runner = llm.engine, llm.engine.model_runner
        if runner.graphs is None:
            return {"error": "no CUDA graphs were captured"}
        for size in runner.graphs.buckets:
            for rows in sorted({size, max(1, size - 1)}):
                ids = [engine.add_request(list(range(5, 13 + i % 7)), SamplingParams(max_tokens=64, temperature=0.0,
                                                                                      ignore_eos=True)) for i in range(rows)]
                engine.step()                                  # every prompt prefilled, a first token each
                batch = engine.scheduler.schedule()            # a decode-only step of `rows` sequences
                _, staged, *_ = runner.stage(batch)
                eager = runner.model(staged.input_ids, staged.positions, staged.attention, runner.kv_caches).clone()
                replayed = runner.graphs.run(staged.input_ids, staged.positions, staged.attention).clone()
                results[f"{dtype}/{size}/{rows}"] = bool(torch.equal(eager, replayed))
                for request_id in ids:
                    engine.abort(request_id)
    return {"cases": results, "targets": {"all_equal": all(results.values())}}


def run_engine_tests() -> dict:
    files = ["tests/tiny/test_engine_triton.py", "tests/tiny/test_engine_devices.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                          capture_output=True, text=True)
    return {"files": files, "returncode": proc.returncode, "tail": proc.stdout.strip().splitlines()[-1:]}


def bench_default_shape(root: Path, smoke: bool) -> dict:
    """qfid vs HF static vs HF continuous batching, bf16, bursty, on a random SmolLM2-135M."""
    from qfid.bench.harness import BenchSpec, run_all
    from qfid.bench.workload import make_workload
    from qfid.quant.formats import load_tokenizer
    from qfid.testing.synthetic import write_synthetic_llama

    path = root / "smollm2-shape"
    if not (path / "config.json").is_file():
        widths = dict(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=1024) if smoke else \
            dict(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152)
        write_synthetic_llama(path, tie_embeddings=True, **widths)
    requests = 16 if smoke else 256
    draws = make_workload(load_tokenizer(path), requests, (32, 256), (16, 128), 0, "bursty", 4.0, "random")
    spec = BenchSpec(str(path), "bfloat16", DEVICE, hf_batch=64, kv_cache_gb=1.0, max_num_batched_tokens=4096)
    results = run_all(["qfid", "hf-static", "hf-cb"], spec, draws, isolate=True)
    records = {r.record["engine"]: r.record for r in results}
    tok = {name: records[name].get("output_tokens_per_s") for name in records}
    ratio = tok["qfid"] / tok["hf-static"] if tok.get("hf-static") else None
    return {"requests": requests, "output_tokens_per_s": tok, "qfid_over_hf_static": ratio,
            "notes": {r.record["engine"]: r.note for r in results if r.note},
            "targets": {"qfid_ge_3x_hf_static": bool(ratio and ratio >= 3)}}


def copy_bandwidth_gbs() -> float | None:
    """Device-to-device copy of 1 GiB: bytes read plus written per second (None off a GPU)."""
    if DEVICE != "cuda":
        return None
    src = torch.empty(2**30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * 10 * src.numel() / (time.perf_counter() - start) / 1e9


def _decode_rate(engine, prompt_len: int, tokens: int) -> float:
    from qfid.engine.sampling import SamplingParams

    engine.add_request(list(range(10, 10 + prompt_len)), SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))
    engine.step()                                   # the prefill
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    start, steps = time.perf_counter(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return steps / (time.perf_counter() - start)


def _bursty(engine, requests: int, smoke: bool) -> float:
    from qfid.engine.sampling import SamplingParams

    g = torch.Generator().manual_seed(1)
    total = 0
    for _ in range(requests):
        n_out = int(torch.randint(16, 128, (1,), generator=g))
        total += n_out
        engine.add_request(torch.randint(10, 1000, (int(torch.randint(32, 256, (1,), generator=g)),), generator=g).tolist(),
                           SamplingParams(max_tokens=n_out, temperature=0.0, ignore_eos=True))
    start = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    return total / (time.perf_counter() - start)


def int4_bytes_per_token(config, group_size: int) -> int:
    """Weights a decode step reads: packed INT4 codes, fp16 scales and packed zeros of every
    decoder Linear, the bf16 LM head and one bf16 embedding row."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = h // config.num_attention_heads * config.num_key_value_heads
    params = layers * (h * h * 2 + 2 * h * kv + 3 * h * i)
    per_group = 2 + 0.5                               # fp16 scale + a 4-bit zero per group
    return int(params * 0.5 + params / group_size * per_group + 2 * config.vocab_size * h + 2 * h)


def decode_8b(smoke: bool) -> dict:
    from qfid.testing.synthetic_runtime import llama_config, random_engine

    config = llama_config(layers=2, hidden=256, intermediate=512, heads=8, kv_heads=2, vocab=2048, max_positions=1024) \
        if smoke else llama_config(layers=32)
    out = {}
    for name, group in (("bf16", None), ("int4", 128 if not smoke else 32)):
        engine = random_engine(config, torch.bfloat16, DEVICE, int4_group_size=group, num_kv_blocks=2048,
                               max_num_batched_tokens=4096, max_num_seqs=256)
        out[name] = {"batch1_decode_tok_s": round(_decode_rate(engine, 128, 16 if smoke else 128), 2),
                     "bursty_output_tok_s": round(_bursty(engine, 16 if smoke else 256, smoke), 1)}
        del engine
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    bandwidth = copy_bandwidth_gbs()
    roofline = bandwidth * 1e9 / int4_bytes_per_token(config, 128) if bandwidth else None
    speedup = out["int4"]["batch1_decode_tok_s"] / out["bf16"]["batch1_decode_tok_s"]
    share = out["int4"]["batch1_decode_tok_s"] / roofline if roofline else None
    out |= {"copy_bandwidth_gb_s": bandwidth, "int4_roofline_tok_s": roofline,
            "int4_over_bf16_batch1": round(speedup, 3), "int4_share_of_roofline": share,
            "targets": {"int4_ge_1.8x_bf16": speedup >= 1.8, "int4_ge_45pct_roofline": bool(share and share >= 0.45)}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "engine-gpu.json"))
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any device")
    parser.add_argument("--parts", default="correctness,graphs,tests,bench,decode8b")
    args = parser.parse_args()
    report = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__}
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for part, run in (("correctness", lambda: check_correctness(root)), ("graphs", lambda: check_graphs(root)),
                          ("tests", run_engine_tests),
                          ("bench", lambda: bench_default_shape(root, args.smoke)),
                          ("decode8b", lambda: decode_8b(args.smoke))):
            if part not in parts:
                continue
            start = time.perf_counter()
            try:
                report[part] = run()
            except Exception as exc:  # one failed part must not lose the others' figures
                report[part] = {"error": f"{type(exc).__name__}: {exc}"}
            report[part + "_s"] = round(time.perf_counter() - start, 1)
            Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
