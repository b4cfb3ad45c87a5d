"""Expert routing on the tiny Mixtral, end to end: both local backends record the same
routing; `qfid eval` stores it per item and `compare` turns it into per-layer agreement that
is 1.0 for a model against itself (also across backends) and, for a candidate whose last
router is perturbed, equals the agreement computed directly from the two models' routers."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from qfid.evals.compare import compare_runs  # noqa: E402
from qfid.evals.render import TARGET_DELIMITER  # noqa: E402

REQUESTS = [
    ("The tenant shall pay rent", " on the first day"),
    ("Revenue rose 12.5% to", " $1,234,567"),
    ("", "question answer: yes"),
    ("El precio subió un ", "3,5 por ciento"),
    ("The lease between the parties states that the tenant shall pay rent monthly. " * 2, " monthly"),
]
SUITES = "legal,finance,general-ppl"


@pytest.fixture(scope="module")
def perturbed_dir(tiny_mixtral_dir, tmp_path_factory):
    """The tiny Mixtral with noise on its last layer's router only: layer 0 routes exactly as
    before, the last layer differs on some tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_mixtral_dir)
    gate = model.model.layers[-1].mlp.gate.weight
    with torch.no_grad():
        gate.add_(torch.randn(gate.shape, generator=torch.Generator().manual_seed(0)) * 0.3 * gate.std())
    path = tmp_path_factory.mktemp("tiny-mixtral-router")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_mixtral_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(tiny_mixtral_dir, perturbed_dir, tmp_path_factory):
    from typer.testing import CliRunner

    from qfid.cli.app import app

    runs_dir = tmp_path_factory.mktemp("runs")
    for name, model, backend in (("hf", tiny_mixtral_dir, "hf"), ("engine", tiny_mixtral_dir, "engine"), ("router", perturbed_dir, "hf")):
        result = CliRunner().invoke(app, ["eval", str(model), "--suite", SUITES, "--name", name, "--backend", backend,
                                          "--runs-dir", str(runs_dir), "--limit", "3", "--max-tokens", "4", "--top-k", "2",
                                          "--dtype", "float32"])
        assert result.exit_code == 0, result.output
    return runs_dir


def test_engine_and_hf_backends_record_identical_routing(tiny_mixtral_dir):
    """Same ids, also when the engine's routing pass splits the requests over several batches."""
    from qfid.evals.backends import make_backend

    hf = make_backend("hf", str(tiny_mixtral_dir), batch_size=2, dtype="float32")
    engine = make_backend("engine", str(tiny_mixtral_dir), max_num_batched_tokens=32, dtype="float32")
    expected, got = hf.expert_routing(REQUESTS), engine.expert_routing(REQUESTS)
    config = hf.model.config
    for (context, continuation), e, g in zip(REQUESTS, expected, got):
        tokens = len(sum(hf._encode_pair(context, continuation), []))
        assert e.k == g.k == config.num_experts_per_tok
        assert len(e.ids) == config.num_hidden_layers and all(len(layer) == tokens * e.k for layer in e.ids)
        assert g.ids == e.ids


def test_runs_record_routing_on_scored_items_only(runs):
    from qfid.evals.pairing import load_run

    records = load_run("hf", runs).records
    scored = records[records["scorer"] != "perplexity"]
    assert scored["expert_ids"].map(len).eq(2).all() and scored["expert_k"].eq(2).all()
    assert records.loc[records["scorer"] == "perplexity", "expert_ids"].isna().all()


def test_a_model_against_itself_agrees_on_every_layer_also_across_backends(runs):
    for cand in ("hf", "engine"):
        comparison = compare_runs("hf", cand, runs, n_boot=20)
        assert {r.name for r in comparison.routing} == {"all", "legal", "finance"}
        assert all(r.tokens > 0 and r.per_layer == [1.0, 1.0] and r.agreement == 1.0 for r in comparison.routing)


def test_perturbed_router_agreement_equals_the_direct_router_computation(runs, tiny_mixtral_dir, perturbed_dir):
    from qfid.evals.backends.hf import HFBackend
    from qfid.evals.pairing import load_run

    base, cand = HFBackend.from_model(str(tiny_mixtral_dir), dtype="float32", device="cpu"), HFBackend.from_model(str(perturbed_dir), dtype="float32", device="cpu")
    records = load_run("hf", runs).records
    comparison = compare_runs("hf", "router", runs, n_boot=20)
    for suite, part in records[records["scorer"] != "perplexity"].groupby("suite"):
        rows = [sum(base._encode_pair(prompt, TARGET_DELIMITER + gold), []) for prompt, gold in zip(part["prompt"], part["gold"])]
        direct = _direct_agreement(base.model, cand.model, rows)
        got = comparison.routing_group("suite", suite)
        assert got.tokens == sum(len(row) for row in rows)
        assert got.per_layer == pytest.approx(direct, abs=1e-12)
    overall = comparison.routing_group("overall", "all").per_layer
    assert overall[0] == 1.0 and 0.5 < overall[1] < 0.95  # only the last router changed, on some tokens


def _direct_agreement(base_model, cand_model, rows: list[list[int]]) -> list[float]:
    """Per layer: share of tokens whose top-k set is equal, from each router's own logits on
    its input (captured with a hook), one unpadded sequence at a time."""
    agree = None
    for row in rows:
        same = (_top_k_sets(base_model, row) == _top_k_sets(cand_model, row)).all(dim=-1)  # [layers, tokens]
        agree = same.sum(dim=1) if agree is None else agree + same.sum(dim=1)
    return (agree.double() / sum(len(row) for row in rows)).tolist()


def _top_k_sets(model, row: list[int]) -> torch.Tensor:
    """[layers, tokens, k] sorted expert ids: softmax over the router's logits, top k."""
    inputs = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda module, args, out: inputs.append((module, args[0])))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([row]))
    finally:
        for hook in hooks:
            hook.remove()
    k = model.config.num_experts_per_tok
    return torch.stack([(h.reshape(-1, h.shape[-1]) @ gate.weight.T).float().softmax(-1).topk(k).indices.sort().values
                        for gate, h in inputs])
