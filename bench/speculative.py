"""Issue #17: speculative decoding (n-gram prompt lookup) against plain decoding, same engine,
same process, runs alternating (plain, spec, plain, spec, ...) so the machine's drift hits
both; every figure is a ratio of medians from this run.

Workloads (the default model, bf16, greedy, 2 threads):
- `extract`: chat requests "copy this passage word for word" over held-out prose windows
  (the output repeats the prompt: what prompt lookup drafts from), EOS honoured; measured
  at concurrency 1, 2, 4, 8 and 16 (all requests of a wave sent together), which is where
  the batch limit for speculation comes from: above it a step is compute-bound and rejected
  drafts cost throughput;
- `bursty`: `qfid bench`'s default text workload (64 requests at t=0, prompts 32-256,
  outputs 16-128, EOS ignored): speculation must not cost more than 5% there.

Also a draft model: the default model's AWQ INT4 checkpoint drafting for its bf16 self
(`extract` at concurrency 1 and 4), the only smaller model of the same tokenizer offline.

Greedy outputs with and without speculation are compared token for token (they must be
equal). Writes bench/results/speculative.json (or --out).

    python bench/speculative.py [--reps 3] [--out bench/results/speculative.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package transformers imports: drop this folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from qfid import LLM, SamplingParams  # noqa: E402
from qfid.bench.workload import make_workload  # noqa: E402
from qfid.engine.speculative import SpecStats  # noqa: E402
from qfid.models.default import ensure_default_model  # noqa: E402

EXTRACT_REQUESTS = 16
EXTRACT_WORDS = (60, 140)
CONCURRENCY = (1, 2, 4, 8, 16)
PROMPT = "Copy the following passage exactly, word for word, and nothing else:\n\n{passage}"


def extract_prompts(tokenizer, n: int) -> list[list[int]]:
    """Chat prompts asking to copy a held-out passage (whole sentences, 60-140 words)."""
    from qfid.paths import data_dir

    words = " ".join(p.read_text(encoding="utf-8") for p in sorted((data_dir() / "heldout").glob("*.txt"))).split()
    prompts = []
    for i in range(n):
        start, length = (i * 397) % (len(words) - 200), EXTRACT_WORDS[0] + (i * 37) % (EXTRACT_WORDS[1] - EXTRACT_WORDS[0])
        passage = " ".join(words[start:start + length])
        messages = [{"role": "user", "content": PROMPT.format(passage=passage)}]
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return [list(p) if not hasattr(p, "input_ids") else list(p["input_ids"]) for p in prompts]


def timed_waves(llm: LLM, prompts, params, concurrency: int) -> tuple[float, list[list[int]]]:
    """Output tokens/s of the prompts sent `concurrency` at a time (each wave waits for the last)."""
    outputs, tokens, start = [], 0, time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        wave = llm.generate(prompts[first:first + concurrency], params[first:first + concurrency])
        outputs += [o.token_ids for o in wave]
        tokens += sum(len(o.token_ids) for o in wave)
    return tokens / (time.perf_counter() - start), outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="extract waves, e.g. 1,4,16")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "speculative.json"))
    args = ap.parse_args()

    model = ensure_default_model()
    common = dict(dtype="bfloat16", num_threads=2, kv_cache_gb=1.0)
    from qfid.bench.harness import resolve_model

    draft_dir, _ = resolve_model("smollm2-135m", "awq-int4")
    plain = LLM(model, **common)
    spec = LLM(model, **common, speculative="ngram", num_speculative_tokens=args.k, speculative_max_batch=1024)
    drafted = LLM(model, **common, speculative=f"draft:{draft_dir}", num_speculative_tokens=args.k,
                  speculative_max_batch=1024)
    tokenizer = plain.tokenizer
    extract = extract_prompts(tokenizer, EXTRACT_REQUESTS)
    extract_params = [SamplingParams(max_tokens=256, temperature=0.0) for _ in extract]   # EOS ends each request
    bursty = make_workload(tokenizer, 64, (32, 256), (16, 128), seed=0)
    bursty_prompts = [list(r.prompt_ids) for r in bursty]
    bursty_params = [SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True) for r in bursty]
    for llm in (plain, spec, drafted):   # warm-up: first-call allocations off the clock
        llm.generate([extract[0]], [SamplingParams(max_tokens=8, temperature=0.0)])

    cases = {f"extract@{c}": (extract, extract_params, c, spec) for c in map(int, args.concurrency.split(","))}
    cases["bursty@64"] = (bursty_prompts, bursty_params, 64, spec)
    cases.update({f"extract@{c} draft-int4": (extract, extract_params, c, drafted) for c in (1, 4)})
    results = {}
    for name, (prompts, params, concurrency, speculating) in cases.items():
        runs = {"plain": [], "spec": []}
        outputs = {}
        speculating.engine.scheduler.spec_stats = SpecStats()   # this case's figures only
        speculating.engine.scheduler.speculative_max_batch = 8 if name.startswith("bursty") else 1024
        for rep in range(args.reps):
            pair = (("plain", plain), ("spec", speculating))
            for label, llm in (pair if rep % 2 == 0 else pair[::-1]):
                tps, outputs[label] = timed_waves(llm, prompts, params, concurrency)
                runs[label].append(tps)
        stats = speculating.engine.scheduler.spec_stats.to_dict()
        ratio = statistics.median(runs["spec"]) / statistics.median(runs["plain"])
        results[name] = {"plain_tok_s": runs["plain"], "spec_tok_s": runs["spec"], "speedup_of_medians": ratio,
                         "identical_outputs": outputs["plain"] == outputs["spec"],
                         "output_tokens": sum(len(o) for o in outputs["plain"]), **stats}
        print(f"{name:24s} plain {statistics.median(runs['plain']):7.1f} tok/s  spec {statistics.median(runs['spec']):7.1f} "
              f"tok/s  x{ratio:.2f}  acceptance {stats['acceptance_rate']:.2f}  tokens/verify step "
              f"{stats['tokens_per_verify_step']:.2f}  identical {results[name]['identical_outputs']}", flush=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "model": str(model), "dtype": "bfloat16",
              "threads": 2, "num_speculative_tokens": args.k, "reps": args.reps,
              "bursty_speculative_max_batch": 8, "cases": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
