"""A run written by the pre-#13 code (tests/data/runs_v1, record format 1) against a run that
today's `qfid eval` writes (format 2) on the same tiny Llama with the same settings: `qfid
compare` pairs them item by item."""
from __future__ import annotations

import json
from pathlib import Path

from qfid.evals.store import RunStore
from tests.cli_helpers import run_cli

V1_RUN = Path(__file__).parents[1] / "data" / "runs_v1" / "tiny-llama"


def test_qfid_compare_pairs_a_format_1_run_with_a_fresh_one(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    manifest = json.loads((V1_RUN / "manifest.json").read_text())
    suites = ",".join(manifest["identity"]["suites"])
    evaluated = run_cli(["eval", tiny_llama_dir, "--suite", suites, "--name", "fresh", "--runs-dir", tmp_path,
                         "--limit", "2", "--max-tokens", "4", "--batch-size", "2", "--top-k", "4"], capsys, monkeypatch)
    assert evaluated.exit_code == 0, evaluated.err
    assert RunStore(V1_RUN.parent, V1_RUN.name).record_format() == 1 and RunStore(tmp_path, "fresh").record_format() == 2
    compared = run_cli(["compare", V1_RUN, "fresh", "--runs-dir", tmp_path, "--format", "json"], capsys, monkeypatch)
    assert compared.exit_code == 0, compared.err
    result = json.loads(compared.out)
    assert {g["name"]: g["n"] for g in result["groups"] if g["level"] == "suite"} == {"legal": 2, "finance": 2}
    assert [p["suite"] for p in result["perplexity"]] == ["general-ppl"]
    assert all(g["kl_tokens"] > 0 for g in result["groups"] if g["level"] == "suite")
