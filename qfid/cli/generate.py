"""`qfid generate`: one prompt through the engine, streamed to the terminal; --json writes
the result (tokens, text, finish reason, timing) for scripts."""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer

from qfid.cli.options import DEVICE_OPT, DTYPE_OPT, MODEL_ARG

HELP = """Generate a completion for one prompt and stream it to the terminal.

Examples:

  qfid generate smollm2-135m "The capital of France is" --max-tokens 32

  qfid generate out/smollm2-awq "Explain compound interest." --chat --temperature 0.7 --seed 1

  qfid generate smollm2-135m "1, 2, 3," --stop "10" --json out/gen.json
"""


def generate_command(
    model: str = MODEL_ARG,
    prompt: str = typer.Argument(..., help="The prompt text."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely (0: all)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt as a user message with the chat template."),
    dtype: str = DTYPE_OPT,
    device: str = DEVICE_OPT,
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Also write the result as JSON to this file."),
) -> None:
    from qfid.engine.llm import LLM
    from qfid.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            seed=seed, stop=stop or ())
    llm = LLM(model, dtype=dtype, device=device, num_threads=threads, max_num_seqs=1)
    prompt_ids = llm.chat_prompt([{"role": "user", "content": prompt}]) if chat else prompt
    start = time.perf_counter()
    first_token_s, output = None, None
    for piece, output in llm.stream(prompt_ids, params):
        first_token_s = first_token_s or time.perf_counter() - start
        sys.stdout.write(piece)
        sys.stdout.flush()
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    count = len(output.token_ids)
    print(f"[{count} tokens, {output.finish_reason}, {count / elapsed:.1f} tok/s, first token {first_token_s:.2f}s]",
          file=sys.stderr)
    if json_path:
        record = {"model": str(model), "prompt": prompt, "text": output.text, "token_ids": output.token_ids,
                  "finish_reason": output.finish_reason, "seconds": elapsed, "time_to_first_token_s": first_token_s}
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
