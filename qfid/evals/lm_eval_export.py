"""Write suites as lm-eval tasks (`lm_eval --include_path DIR --tasks qfid_finance`).

Each suite becomes `qfid_<name>.yaml` + `qfid_<name>.jsonl`. Prompts are rendered by qfid
(few-shot included) and stored whole, so lm-eval scores exactly the strings qfid scores:
multiple choice as `output_type: multiple_choice` (lm-eval's `acc` and `acc_norm` are the
argmax of summed and of per-character log-probs, qfid's `correct` and `correct_norm`),
perplexity as `loglikelihood_rolling`, and generative suites as `generate_until` judged by
qfid's own scorer through `process_results` (tolerances and multi-script number reading
included), which needs qfid importable where lm-eval runs. A user's suite exports the same
way whatever its source (CSV, Parquet, a datasets folder) or prompt form (`{field}`, Jinja):
the rows written are qfid's own rendering of its Items.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from qfid.evals.render import choice_targets, render_plain
from qfid.evals.suite import Suite
from qfid.utils.fs import atomic_write_text

TAG = "qfid"
SCORING_MODULE = "qfid_lm_eval_scoring"
SCORING_SHIM = '"""Scores qfid generative tasks with qfid\'s own scorer."""\nfrom qfid.evals.lm_eval_scoring import process_results  # noqa: F401\n'


def task_name(suite: Suite) -> str:
    return "qfid_" + "".join(c if c.isalnum() else "_" for c in suite.name)


def export_suites(suites: list[Suite], out_dir: Path) -> list[Path]:
    """The YAML files written (one per suite) plus the shared scoring module."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [export_suite(suite, out_dir) for suite in suites]
    if any(_needs_qfid_scoring(s) for s in suites):
        atomic_write_text(out_dir / f"{SCORING_MODULE}.py", SCORING_SHIM)
    return written


def export_suite(suite: Suite, out_dir: Path) -> Path:
    name = task_name(suite)
    data_path = out_dir / f"{name}.jsonl"
    atomic_write_text(data_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in _rows(suite)))
    config = {
        "task": name, "tag": [TAG], "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_path)}}, "test_split": "test",
        **_task_kind(suite),
        "metadata": {"version": suite.version, "qfid_suite": suite.name, "description": suite.description},
    }
    text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    if _needs_qfid_scoring(suite):
        text += f"process_results: !function {SCORING_MODULE}.process_results\n"
    yaml_path = out_dir / f"{name}.yaml"
    atomic_write_text(yaml_path, text)
    return yaml_path


class _Dumper(yaml.SafeDumper):
    """Strings with newlines (stop sequences) as "\\n\\n", not as folded multi-line scalars."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None))


def _needs_qfid_scoring(suite: Suite) -> bool:
    return not suite.scorer.uses_loglikelihood


def _task_kind(suite: Suite) -> dict:
    if suite.scorer.type == "perplexity":
        return {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text",
                "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")]}
    if suite.scorer.uses_loglikelihood:
        return {"output_type": "multiple_choice", "doc_to_text": "prompt", "doc_to_choice": "choices", "doc_to_target": "label",
                "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]}
    return {"output_type": "generate_until", "doc_to_text": "prompt", "doc_to_target": "answer",
            "generation_kwargs": {"until": list(suite.generation.stop), "max_gen_toks": suite.generation.max_tokens, "do_sample": False},
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def _rows(suite: Suite) -> list[dict]:
    scorer = {k: v for k, v in _scorer_dict(suite).items() if v not in (None, [], "")}
    rows = []
    for item in suite.items:
        if suite.scorer.type == "perplexity":
            rows.append({"id": item.id, "category": item.category, "lang": item.lang, "text": item.fields["text"]})
            continue
        row = {"id": item.id, "category": item.category, "lang": item.lang, "prompt": render_plain(suite, item),
               "answer": "" if item.answer is None else str(item.answer)}
        if _needs_qfid_scoring(suite):
            row["scorer"] = scorer
        if item.choices is not None:
            row.update(choices=choice_targets(suite, item) if suite.scorer.type == "choice" else list(item.choices), label=item.label)
        rows.append(row)
    return rows


def _scorer_dict(suite: Suite) -> dict:
    spec = suite.scorer
    return {"type": spec.type, "rel_tol": spec.rel_tol, "abs_tol": spec.abs_tol, "markers": list(spec.markers),
            "pattern": spec.pattern, "target": spec.target, "method": spec.method}
