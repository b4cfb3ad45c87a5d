"""lm-eval's `process_results` for qfid's generative tasks: the exported row carries the
scorer and the answer, and qfid judges the generation exactly as `qfid eval` does."""
from __future__ import annotations

from qfid.evals.items import Item
from qfid.evals.scoring import score_generation
from qfid.evals.suite import ScorerSpec


def process_results(doc: dict, results: list) -> dict:
    spec = dict(doc["scorer"])
    spec["markers"] = tuple(spec.get("markers", ()))
    choices = doc.get("choices")
    item = Item(id=doc["id"], category=doc["category"], lang=doc["lang"], fields={}, answer=doc["answer"],
                choices=tuple(choices) if choices else None, label=doc.get("label") if choices else None)
    prediction = results[0] if results else ""
    return {"acc": float(score_generation(ScorerSpec(**spec), item, prediction).correct)}
