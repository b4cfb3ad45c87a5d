"""AWQ on tiny random models: it beats RTN layer by layer, scaling alone keeps the function,
the search never writes to the model, a saved search replays exactly, GQA and MoE are handled."""
from __future__ import annotations

import pytest
import torch

from qfid.errors import QfidError
from qfid.models.linears import block_module, decoder_blocks, model_linears
from qfid.models.loading import load_dense_model, model_arch, read_config
from qfid.quant.awq import apply_awq_artifact, awq_quantize, scale_key
from qfid.quant.awq_block import (
    _ScoringBlock,
    clip_grams,
    gather_activations,
    search_block_clips,
    search_block_scales,
)
from qfid.quant.block_layout import block_linears, resolve_block_mappings
from qfid.quant.awq_search import scaled_candidates
from qfid.quant.block_capture import capture_block_inputs
from qfid.quant.calib import load_calibration
from qfid.layouts.primitives import int4_fake_quantize

GROUP = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared machine every OpenMP
    barrier waits for a descheduled sibling (10x slower measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(model_dir):
    model, tokenizer = load_dense_model(model_dir)
    return model, tokenizer, model_arch(read_config(model_dir))


def _calib(tokenizer, n=8, seq_len=64):
    return load_calibration(None, tokenizer, n, seq_len, seed=0)[0]


@pytest.fixture(scope="module")
def llama_awq(tiny_llama_dir):
    """(original model, AWQ-processed model, result, spec, calibration ids) on the tiny Llama."""
    original, tokenizer, spec = _load(tiny_llama_dir)
    model, _, _ = _load(tiny_llama_dir)
    ids = _calib(tokenizer)
    return original, model, awq_quantize(model, spec, ids, GROUP), spec, ids


def _linear_inputs(model, spec, ids) -> dict[str, torch.Tensor]:
    """Every quantized Linear's input on `ids`, by full checkpoint name."""
    inputs, handles = {}, []
    for name, ref in model_linears(model, spec).items():
        def hook(module, args, name=name):
            inputs[name] = args[0].reshape(-1, args[0].shape[-1])
        handles.append(ref.module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return inputs


def _scales_by_linear(model, spec, artifact):
    """(input-side scale, output-side scale) per Linear name, from the artifact: AWQ computes
    `((x / s_in) @ Q^T) * s_out` where the original computed `x @ W^T`."""
    s_in, s_out = {}, {}
    for i, block in enumerate(decoder_blocks(model, spec)):
        prefix = f"{spec.blocks}.{i}"
        for m in resolve_block_mappings(block, spec):
            s = artifact[scale_key(f"{prefix}.{m.smooth}")]
            s_in.update({f"{prefix}.{b}": s for b in m.balance})
            s_out[f"{prefix}.{m.smooth}"] = s
    return s_in, s_out


def test_awq_output_error_is_at_most_rtn_for_every_layer(llama_awq):
    original, _, result, spec, ids = llama_awq
    inputs = _linear_inputs(original, spec, ids)
    s_in, s_out = _scales_by_linear(original, spec, result.artifact)
    refs = model_linears(original, spec)
    assert set(result.quantized) == set(refs)
    for name, ref in refs.items():
        x, w = inputs[name], ref.get()
        target = x @ w.T
        rtn_err = (x @ int4_fake_quantize(w, GROUP).T - target).pow(2).mean()
        ones = torch.ones(w.shape[1])
        awq_out = (x / s_in.get(name, ones)) @ result.quantized[name].dequantize().T
        awq_err = (awq_out * s_out.get(name, torch.ones(w.shape[0])) - target).pow(2).mean()
        assert awq_err <= rtn_err, f"{name}: AWQ {awq_err:.3e} > RTN {rtn_err:.3e}"


def test_scaling_alone_keeps_the_model_function(llama_awq):
    original, scaled, _, _, ids = llama_awq
    with torch.no_grad():
        assert torch.allclose(scaled(ids).logits, original(ids).logits, atol=1e-4)
    norm = "model.layers.0.input_layernorm.weight"
    assert not torch.equal(scaled.state_dict()[norm], original.state_dict()[norm])


def _first_block_activations(model_dir):
    model, tokenizer, spec = _load(model_dir)
    block = decoder_blocks(model, spec)[0]
    batches = capture_block_inputs(model, block, _calib(tokenizer), batch_size=4)
    refs, mappings = block_linears(block, spec), resolve_block_mappings(block, spec)
    acts, _ = gather_activations(block, refs, mappings, batches, search_tokens=256)
    return block, spec, refs, mappings, acts


@pytest.mark.parametrize("score_dtype", [torch.float32, torch.bfloat16])
def test_search_leaves_the_block_unchanged(tiny_llama_dir, score_dtype):
    block, spec, refs, mappings, acts = _first_block_activations(tiny_llama_dir)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    scales = search_block_scales(block, refs, mappings, acts, GROUP, grid=20, score_dtype=score_dtype)
    search_block_clips(refs, clip_grams(acts, refs, mappings, scales, spec, GROUP), GROUP)
    assert any(not torch.equal(s, torch.ones_like(s)) for s in scales.values())
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed during the search"


def test_bf16_scoring_picks_scales_as_good_as_fp32_scoring(tiny_llama_dir):
    """Scoring candidates in bf16 (the default on CPUs with native bf16) must not cost
    quality: judged by the fp32 loss, its pick is within 2% of the fp32 search's best."""
    block, _, refs, mappings, acts = _first_block_activations(tiny_llama_dir)
    fp32_scales = search_block_scales(block, refs, mappings, acts, GROUP, grid=20, score_dtype=torch.float32)
    bf16_scales = search_block_scales(block, refs, mappings, acts, GROUP, grid=20, score_dtype=torch.bfloat16)
    judge = _ScoringBlock(block, refs, torch.float32)
    for m in mappings:
        loss = judge.loss(m, acts)
        weights = [refs[b].get() for b in m.balance]
        with torch.inference_mode():
            best = loss(scaled_candidates(weights, fp32_scales[m.smooth], GROUP))
            picked = loss(scaled_candidates(weights, bf16_scales[m.smooth], GROUP))
        assert picked <= best * 1.02, f"{m.smooth}: bf16 pick {picked:.4e} vs fp32 best {best:.4e}"


def test_chunked_reductions_agree_with_whole_passes(tiny_llama_dir, monkeypatch):
    """Losses, weight and activation means and Grams taken in row chunks (what keeps an 8B
    block's temporaries small and under the allocator's mmap threshold) equal the whole
    passes to fp32 summation order, and the search picks the same scales."""
    import qfid.quant.awq_search as awq_search
    from qfid.quant.awq_search import activation_means, group_gram, weight_means

    block, spec, refs, mappings, acts = _first_block_activations(tiny_llama_dir)
    whole = _ScoringBlock(block, refs, torch.float32)
    x = acts.inputs[mappings[0].inspect]
    weights = [refs[b].get() for b in mappings[0].balance]
    whole_means = activation_means(x), weight_means(weights, GROUP)
    monkeypatch.setattr(awq_search, "CHUNK_BYTES", 4 * 64 * 23)   # 23 rows of a 64-wide layer: many chunks
    chunked = _ScoringBlock(block, refs, torch.float32)
    for a, b in zip((activation_means(x), weight_means(weights, GROUP)), whole_means):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for m in mappings:
        weights = [refs[b].get() for b in m.balance]
        cands = scaled_candidates(weights, torch.rand(weights[0].shape[1]) + 0.5, GROUP)
        with torch.inference_mode():
            a, b = whole.loss(m, acts)(cands), chunked.loss(m, acts)(cands)
        assert a == pytest.approx(b, rel=1e-5), m.smooth
    chunked_scales = search_block_scales(block, refs, mappings, acts, GROUP, grid=20)
    monkeypatch.undo()
    whole_scales = search_block_scales(block, refs, mappings, acts, GROUP, grid=20)
    for k in whole_scales:   # the same grid point: equal up to the means' rounding
        torch.testing.assert_close(chunked_scales[k], whole_scales[k], rtol=1e-4, atol=0)
    from qfid.layouts.primitives import int4_quantize
    from qfid.quant.awq_block import _int4_quantize_rows
    w = refs[mappings[0].balance[0]].get()
    clip = w.abs().reshape(w.shape[0], -1, GROUP).amax(-1) * 0.9
    whole = int4_quantize(w, GROUP, clip)
    monkeypatch.setattr(awq_search, "CHUNK_BYTES", 4 * w.shape[1] * 5)   # 5-row chunks: bit for bit
    rows = _int4_quantize_rows(w, GROUP, clip)
    assert all(torch.equal(getattr(rows, f), getattr(whole, f)) for f in ("codes", "scales", "zeros"))
    torch.testing.assert_close(group_gram(x, GROUP, chunk_rows=17), group_gram(x, GROUP), rtol=1e-5, atol=1e-6)


def test_artifact_replay_gives_identical_int4_weights(tiny_llama_dir, llama_awq):
    _, _, result, spec, _ = llama_awq
    fresh, _, _ = _load(tiny_llama_dir)
    replayed = apply_awq_artifact(fresh, spec, result.artifact, GROUP)
    assert set(replayed) == set(result.quantized)
    for name, q in result.quantized.items():
        r = replayed[name]
        assert torch.equal(r.codes, q.codes) and torch.equal(r.zeros, q.zeros) and torch.equal(r.scales, q.scales)


def test_artifact_that_does_not_fit_the_model_fails_loudly(tiny_llama_dir, llama_awq):
    _, _, result, spec, _ = llama_awq
    missing = {k: v for k, v in result.artifact.items() if not k.endswith("input_layernorm.awq_scale")}
    with pytest.raises(QfidError, match="no model.layers.0.input_layernorm.awq_scale"):
        apply_awq_artifact(_load(tiny_llama_dir)[0], spec, missing, GROUP)
    extra = dict(result.artifact, **{"model.layers.9.mlp.up_proj.awq_scale": torch.ones(4)})
    with pytest.raises(QfidError, match="model.layers.9"):
        apply_awq_artifact(_load(tiny_llama_dir)[0], spec, extra, GROUP)


def test_gqa_skips_v_to_o(llama_awq):
    original, _, result, spec, _ = llama_awq
    block = decoder_blocks(original, spec)[0]
    assert [m.smooth for m in resolve_block_mappings(block, spec)] == [
        "input_layernorm", "post_attention_layernorm", "mlp.up_proj"]
    assert not any("v_proj.awq_scale" in k for k in result.artifact)


def test_v_to_o_applies_without_gqa(tmp_path):
    from qfid.testing.tiny import make_tiny_llama

    model_dir = make_tiny_llama(tmp_path / "mha", hidden=128, intermediate=256, heads=2, kv_heads=2)
    model, tokenizer, spec = _load(model_dir)
    ids = _calib(tokenizer, n=4)
    with torch.no_grad():
        before = model(ids).logits
    result = awq_quantize(model, spec, ids, GROUP, grid=4)
    assert "model.layers.0.self_attn.v_proj.awq_scale" in result.artifact
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-4)


@pytest.fixture(scope="module")
def mixtral_awq(tiny_mixtral_dir):
    original, tokenizer, spec = _load(tiny_mixtral_dir)
    model, _, _ = _load(tiny_mixtral_dir)
    ids = _calib(tokenizer)
    return original, model, awq_quantize(model, spec, ids, GROUP, grid=8), spec, ids


def test_moe_quantizes_every_expert_and_keeps_the_router_in_full_precision(mixtral_awq):
    original, scaled, result, spec, ids = mixtral_awq
    assert set(result.quantized) == set(model_linears(original, spec))
    assert any(".experts.3.w2" in name for name in result.quantized)
    assert not any(name.endswith(".gate") for name in result.quantized)
    router_before = block_module(decoder_blocks(original, spec)[0], "block_sparse_moe.gate").weight
    router_after = block_module(decoder_blocks(scaled, spec)[0], "block_sparse_moe.gate").weight
    assert router_after.dtype == torch.float32 and not torch.equal(router_after, router_before)
    with torch.no_grad():
        assert torch.allclose(scaled(ids).logits, original(ids).logits, atol=1e-4)


def test_expert_without_tokens_keeps_unit_scale_and_plain_rtn(tmp_path):
    """With top-1 routing and expert 3's router row the mean of experts 0 and 1, expert 3 can
    never win, so it is never routed a token."""
    from qfid.testing.tiny import make_tiny_mixtral

    model_dir = make_tiny_mixtral(tmp_path / "moe", top_k=1)
    model, tokenizer, spec = _load(model_dir)
    for block in decoder_blocks(model, spec):
        router = block_module(block, "block_sparse_moe.gate").weight
        router.data[3] = (router.data[0] + router.data[1]) / 2
    result = awq_quantize(model, spec, _calib(tokenizer, n=4), GROUP, grid=4)
    prefix = "model.layers.0.block_sparse_moe.experts"
    assert torch.equal(result.artifact[f"{prefix}.3.w3.awq_scale"], torch.ones(256))
    assert not any(k.startswith(f"{prefix}.3.") and k.endswith("awq_clip") for k in result.artifact)
    assert f"{prefix}.0.w2.awq_clip" in result.artifact
