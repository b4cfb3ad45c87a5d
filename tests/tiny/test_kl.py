"""KL in `compare`, end to end on the tiny Llama: the HF backend stores top-k log-probs on the
answer tokens, RunStore keeps them (float32), compare pairs positions and sums KL. With
k = vocabulary size that path must equal KL computed directly from both models' full
softmax at the same positions."""
from __future__ import annotations

import copy

import pytest

from qfid.evals.compare import compare_runs
from tests.unit.test_compare import record, write_run

PAIRS = [("The tenant shall pay rent", " on the first day"), ("The quarterly revenue rose", " 12.5% to $1,234,567"),
         ("Der Vertrag endet am", " 31. Dezember."), ("question answer:", " yes")]


def _models(model_dir):
    import torch

    from qfid.evals.backends.hf import HFBackend

    base = HFBackend.from_model(str(model_dir), batch_size=2, dtype="float32", device="cpu")
    perturbed = copy.deepcopy(base.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
    return base, HFBackend(perturbed, base.tokenizer, batch_size=2)


def _token_pairs(tokenizer):
    return [(tokenizer(c, add_special_tokens=False).input_ids, tokenizer(x, add_special_tokens=False).input_ids) for c, x in PAIRS]


def _write(runs_dir, name, results):
    write_run(runs_dir, name, [record("s", f"s-{i}", True, answer_logprob=r.logprob, answer_tokens=r.n_tokens,
                                      topk_ids=r.topk.ids, topk_logprobs=r.topk.logprobs) for i, r in enumerate(results)])


def _direct_mean_kl(base_model, cand_model, pairs) -> float:
    """Full-vocabulary KL(base || cand) at every continuation position, averaged over positions."""
    import torch

    total, positions = 0.0, 0
    for context, continuation in pairs:
        ids = torch.tensor([context + continuation])
        span = slice(len(context) - 1, len(context) + len(continuation) - 1)  # logits at t predict token t + 1
        with torch.no_grad():
            base_lp = base_model(ids).logits[0, span].double().log_softmax(-1)
            cand_lp = cand_model(ids).logits[0, span].double().log_softmax(-1)
        total += float((base_lp.exp() * (base_lp - cand_lp)).sum())
        positions += len(continuation)
    return total / positions


def test_topk_path_at_full_vocabulary_equals_direct_kl(tiny_llama_dir, tmp_path):
    base, cand = _models(tiny_llama_dir)
    pairs = _token_pairs(base.tokenizer)
    vocab = base.model.config.vocab_size
    _write(tmp_path, "base", base.score_token_pairs(pairs, top_k=vocab))
    _write(tmp_path, "cand", cand.score_token_pairs(pairs, top_k=vocab))
    group = compare_runs("base", "cand", tmp_path, n_boot=50).group("suite", "s")
    direct = _direct_mean_kl(base.model, cand.model, pairs)
    assert direct > 1e-3  # the perturbation is large enough for the comparison to mean something
    assert group.kl_tokens == sum(len(x) for _, x in pairs)
    assert group.mean_kl == pytest.approx(direct, rel=1e-4)
    assert compare_runs("base", "base", tmp_path, n_boot=50).group("suite", "s").mean_kl == pytest.approx(0, abs=1e-6)


def test_runs_written_by_qfid_eval_compare_and_gate(tiny_llama_dir, tmp_path, monkeypatch):
    """What the runner stores (top-k on the answer tokens, choice log-probs, perplexity texts)
    reads back into a comparison: a model against itself has zero KL, margin change and flips."""
    from typer.testing import CliRunner

    from qfid.cli.app import app

    for name in ("first", "second"):
        result = CliRunner().invoke(app, ["eval", str(tiny_llama_dir), "--suite", "legal,finance,general-ppl", "--name", name,
                                          "--runs-dir", str(tmp_path), "--limit", "3", "--max-tokens", "4", "--top-k", "4"])
        assert result.exit_code == 0, result.output
    comparison = compare_runs("first", "second", tmp_path, n_boot=50)
    legal, finance = comparison.group("suite", "legal"), comparison.group("suite", "finance")
    assert legal.margin_items == 3 and legal.margin_delta == pytest.approx(0, abs=1e-6)
    assert legal.kl_tokens > 0 and finance.kl_tokens > 0 and legal.mean_kl == pytest.approx(0, abs=1e-6)
    assert comparison.group("overall", "all").flip_rate == 0
    assert comparison.routing == [] and not any("rout" in note for note in comparison.notes)  # a dense model
    assert [row.suite for row in comparison.perplexity] == ["general-ppl"] and comparison.perplexity[0].change == pytest.approx(0, abs=1e-9)
    monkeypatch.chdir(tmp_path)
    gate = CliRunner().invoke(app, ["gate", "first", "second", "--runs-dir", str(tmp_path)])
    assert gate.exit_code == 0, gate.output
