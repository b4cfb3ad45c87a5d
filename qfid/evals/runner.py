"""Run suites on a backend into a RunStore: pick the items (--limit, --seed), skip what a
previous attempt finished, evaluate in batches, append records after every batch, and
summarise per suite when done.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from qfid.evals.backends.base import Backend
from qfid.evals.evaluate import evaluate_batch
from qfid.evals.items import Item
from qfid.evals.store import RunStore
from qfid.evals.suite import Suite


@dataclass(frozen=True, slots=True)
class RunOptions:
    model: str
    limit: int | None = None
    seed: int = 0
    top_k: int = 10
    chat: bool = False
    batch_items: int = 16
    max_tokens: int | None = None


def select_items(items: tuple[Item, ...] | list[Item], limit: int | None, seed: int) -> list[Item]:
    """A seeded sample of whole groups of parallel items (all languages of a base id stay
    together, so a limited multilingual run still compares like with like), in file order."""
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.base_id, []).append(item)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    chosen: set[str] = set()
    count = 0
    for key in keys:
        if count >= limit:
            break
        chosen.add(key)
        count += len(groups[key])
    return [item for item in items if item.base_id in chosen]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_manifest(name: str, backend: Backend, suites: list[Suite], options: RunOptions) -> dict:
    from qfid import __version__

    described = backend.describe()
    identity = {"model": options.model, "backend": backend.name, "dtype": described.get("dtype"),
                "suites": {s.name: s.version for s in suites}, "limit": options.limit, "seed": options.seed,
                "prompt_style": "chat" if options.chat else "plain", "top_k": options.top_k}
    suites_info = [{"name": s.name, "version": s.version, "source": str(s.source), "items": len(s.items),
                    "selected": len(select_items(s.items, options.limit, options.seed))} for s in suites]
    return {"name": name, "identity": identity, "model": described, "suites": suites_info,
            "qfid_version": __version__, "started": now()}


def evaluate_run(name: str, backend: Backend, suites: list[Suite], store: RunStore, options: RunOptions,
                 overwrite: bool = False, progress=None) -> dict:
    """`qfid eval`'s whole job, which the sweep runs too: start or resume run `name` in
    `store`, evaluate every unfinished item, mark the run complete; its results summary."""
    store.open(build_manifest(name, backend, suites, options), overwrite=overwrite)
    results = run_suites(backend, suites, store, options, progress)
    store.finish(results, now())
    return results


def run_suites(backend: Backend, suites: list[Suite], store: RunStore, options: RunOptions, progress=None) -> dict:
    """Evaluate every selected, unfinished item; returns the per-suite results summary."""
    chat = getattr(backend, "format_chat", None) if options.chat else None
    if options.chat and chat is None:
        from qfid.errors import QfidError

        raise QfidError(f"the {backend.name} backend cannot apply a chat template; drop --chat")
    done = store.done_keys()
    timings = {}
    for suite in suites:
        todo = [i for i in select_items(suite.items, options.limit, options.seed) if (suite.name, i.id) not in done]
        task = progress.add_task(suite.name, total=len(todo)) if progress else None
        started = time.perf_counter()
        for start in range(0, len(todo), options.batch_items):
            batch = todo[start:start + options.batch_items]
            store.append(evaluate_batch(backend, suite, batch, options.top_k, chat, options.max_tokens))
            if progress:
                progress.advance(task, len(batch))
        timings[suite.name] = (len(todo), time.perf_counter() - started)
    return summarize(store.records(), timings)


def summarize(records, timings: dict) -> dict:
    """Accuracy (or perplexity) per suite, with this session's throughput."""
    results = {}
    for suite, frame in records.groupby("suite", sort=False):
        evaluated, seconds = timings.get(suite, (0, 0.0))
        entry = {"items": int(len(frame)), "evaluated_now": evaluated, "seconds": round(seconds, 3),
                 "items_per_s": round(evaluated / seconds, 3) if seconds > 0 else None}
        if frame["scorer"].iloc[0] == "perplexity":
            entry["perplexity"] = math.exp(-frame["answer_logprob"].sum() / max(1, frame["answer_tokens"].sum()))
        else:
            entry["accuracy"] = float(frame["correct"].astype(bool).mean())
        results[suite] = entry
    return results
