"""Issue #12's CPU guard: `qfid bench` (qfid engine only, bf16, the default model, a fixed
bursty workload) from two installs run in turn, A B A B ..., and the ratio of their output
tokens/s taken pair by pair, so drift in the machine's speed cancels. A is this checkout; B
is the pre-change commit in its own worktree and venv (each pair runs them in turn, which
one first alternating from pair to pair):

    git worktree add --detach /tmp/qfid-before 1e18e16 && (cd /tmp/qfid-before && make install)
    python bench/engine_cpu_ratio.py --baseline /tmp/qfid-before/.venv/bin/qfid --pairs 6

Target: median ratio >= 0.97. On a shared 2-core machine a pair's ratio moves by +-15%
(the host's load changes both CPU and wall seconds), so the script also measures what the
change could have slowed: the engine's per-step Python work, on the tiny Llama where it
dominates (a decode step of 16 sequences, bf16, one thread; best of 7 repetitions per run,
runs alternating). The kernels are the same C++ sources in both trees. Writes
bench/results/engine-cpu-ratio.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ARGS = ["bench", "smollm2-135m", "--scheme", "bf16", "--engines", "qfid", "--requests", "64",
        "--workload", "bursty", "--seed", "0", "--threads", "2"]


def run_once(qfid: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        # a neutral cwd: `python -m` workers must import each install's own qfid, not this checkout
        subprocess.run([qfid, *ARGS, "--json", out.name], check=True, capture_output=True, cwd=tempfile.gettempdir())
        (record,) = json.loads(Path(out.name).read_text())
    return {key: record.get(key) for key in ("output_tokens_per_s", "tpot_p50_s", "ttft_p50_s", "peak_rss_mb", "cpu_s")}


OVERHEAD = """
import time
from pathlib import Path
from qfid import LLM, SamplingParams
from qfid.testing.tiny import make_tiny_llama
path = Path(PATH)
if not (path / "config.json").exists():
    make_tiny_llama(path)
llm = LLM(path, dtype="bfloat16", num_threads=1, num_kv_blocks=512)
best = 1e9
for rep in range(7):
    steps, start = 0, time.perf_counter()
    for i in range(16):
        llm.engine.add_request(list(range(5, 25 + i)), SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True))
    while llm.engine.has_unfinished():
        llm.engine.step()
        steps += 1
    best = min(best, (time.perf_counter() - start) / steps)
print(best)
"""


def step_overhead_ms(qfid: str, tiny_dir: str) -> float:
    python = str(Path(qfid).with_name("python"))
    done = subprocess.run([python, "-c", OVERHEAD.replace("PATH", repr(tiny_dir))], check=True, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    return float(done.stdout.strip().splitlines()[-1]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="the pre-change install's qfid executable")
    parser.add_argument("--candidate", default=str(Path(sys.executable).with_name("qfid")))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--out", default="bench/results/engine-cpu-ratio.json")
    args = parser.parse_args()
    pairs = []
    for i in range(args.pairs):
        if i % 2 == 0:     # alternate which runs first, so an order effect cancels over the pairs
            new, old = run_once(args.candidate), run_once(args.baseline)
        else:
            old, new = run_once(args.baseline), run_once(args.candidate)
        pairs.append({"candidate": new, "baseline": old,
                      "ratio": new["output_tokens_per_s"] / old["output_tokens_per_s"]})
        print(f"pair {i}: {new['output_tokens_per_s']:.1f} vs {old['output_tokens_per_s']:.1f} tok/s "
              f"({pairs[-1]['ratio']:.3f}x)", flush=True)
        Path(args.out).write_text(json.dumps({"command": "qfid " + " ".join(ARGS), "pairs": pairs,
                                              "median_ratio_so_far": statistics.median(p["ratio"] for p in pairs)},
                                             indent=2) + "\n")   # kept if the run is stopped
    median = statistics.median(p["ratio"] for p in pairs) if pairs else None   # --pairs 0: the step overhead only
    with tempfile.TemporaryDirectory() as tiny:
        overhead = {"candidate_ms": [], "baseline_ms": []}
        for _ in range(3):
            overhead["baseline_ms"].append(step_overhead_ms(args.baseline, tiny))
            overhead["candidate_ms"].append(step_overhead_ms(args.candidate, tiny))
    overhead["ratio_of_best"] = min(overhead["baseline_ms"]) / min(overhead["candidate_ms"])
    print(f"tiny-model step: {min(overhead['candidate_ms']):.3f} vs {min(overhead['baseline_ms']):.3f} ms")
    report = {"command": "qfid " + " ".join(ARGS), "cpu": platform.processor() or platform.machine(),
              "pairs": pairs, "median_ratio": median,
              "target": {"median_ratio_ge_0.97": None if median is None else median >= 0.97},
              "tiny_step_overhead": overhead}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if median is not None:
        print(f"median ratio {median:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
