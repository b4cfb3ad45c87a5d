"""A benchmark workload: which prompts arrive when, and how many tokens each must get.

Everything is drawn from one seeded RNG so two processes (or two runs) that build the same
workload replay exactly the same requests; every engine is then told to generate exactly
`output_len` tokens per request, EOS ignored, so throughput compares equal work.
No torch here: the workload is plain data that travels to worker processes as JSON.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from qfid.errors import QfidError
from qfid.paths import data_dir

WORKLOADS = ("bursty", "uniform")
PROMPT_SOURCES = ("text", "random")


@dataclass(frozen=True)
class BenchRequest:
    """`arrival_s` is the offset from the start of the run at which the request is sent."""

    arrival_s: float
    prompt_ids: tuple[int, ...]
    output_len: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchRequest":
        return cls(float(data["arrival_s"]), tuple(data["prompt_ids"]), int(data["output_len"]))


def parse_range(text: str, name: str) -> tuple[int, int]:
    """'32-256' -> (32, 256); a single number means a fixed length."""
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise QfidError(f"{name} must look like 32-256 or 64; got {text!r}") from None
    if bounds[0] < 1 or bounds[0] > bounds[1]:
        raise QfidError(f"{name} must be positive and low <= high; got {text!r}")
    return bounds


def make_workload(tokenizer, num_requests: int, prompt_len: tuple[int, int], output_len: tuple[int, int],
                  seed: int = 0, kind: str = "bursty", rate: float = 4.0, source: str = "text") -> list[BenchRequest]:
    """`bursty` sends everything at t=0; `uniform` sends a Poisson stream at `rate`
    requests per second. Prompts are windows of real text (bundled held-out prose, so
    attention sees natural token statistics) or uniform draws from the non-special vocab."""
    _check_choice("workload", kind, WORKLOADS)
    _check_choice("prompt source", source, PROMPT_SOURCES)
    if num_requests < 1:
        raise QfidError(f"--requests must be at least 1; got {num_requests}")
    if kind == "uniform" and rate <= 0:
        raise QfidError(f"--rate must be positive; got {rate}")
    rng = random.Random(seed)
    lengths = [(rng.randint(*prompt_len), rng.randint(*output_len)) for _ in range(num_requests)]
    draw = _text_windows(tokenizer, rng) if source == "text" else _vocab_draws(tokenizer, rng)
    arrivals = _arrivals(rng, num_requests, kind, rate)
    return [BenchRequest(arrival, tuple(draw(p_len)), o_len) for arrival, (p_len, o_len) in zip(arrivals, lengths)]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise QfidError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _arrivals(rng: random.Random, count: int, kind: str, rate: float) -> list[float]:
    if kind == "bursty":
        return [0.0] * count
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def _text_windows(tokenizer, rng: random.Random):
    """Token windows at random offsets of the concatenated corpus (wrapping around), so
    prompts rarely share a prefix and the prefix cache does not flatter the engine."""
    files = sorted((data_dir() / "heldout").glob("*.txt"))
    if not files:
        raise QfidError(f"no bundled text under {data_dir() / 'heldout'}; use --prompt-source random")
    corpus = tokenizer("\n\n".join(Path(f).read_text(encoding="utf-8") for f in files)).input_ids

    def draw(length: int) -> list[int]:
        start = rng.randrange(len(corpus))
        return [corpus[(start + i) % len(corpus)] for i in range(length)]

    return draw


def _vocab_draws(tokenizer, rng: random.Random):
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]

    def draw(length: int) -> list[int]:
        return [rng.choice(vocab) for _ in range(length)]

    return draw
