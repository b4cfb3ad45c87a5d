"""The Python API on tiny random models: text, stop conditions, seeds, abort, limits, and the
architectures beyond plain Llama (llama3 RoPE scaling, Qwen2's attention bias)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qfid import LLM, SamplingParams
from qfid.errors import QfidError
from tests.tiny.test_engine_greedy import one_thread  # noqa: E402,F401 (autouse: one torch thread here too)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, max_model_len=512)


GREEDY = dict(temperature=0.0, ignore_eos=True)


def test_import_qfid_stays_light():
    code = "import sys, qfid; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_text_prompts_decode_to_the_output_tokens(llm):
    (output,) = llm.generate(["The tenant shall pay"], SamplingParams(max_tokens=12, **GREEDY))
    assert output.prompt_token_ids == llm.tokenizer("The tenant shall pay").input_ids
    assert output.text == llm.tokenizer.decode(output.token_ids, skip_special_tokens=True)
    assert len(output.token_ids) == 12 and output.logprobs is None and output.prompt_logprobs is None


def test_stop_token_ids_and_stop_strings_end_generation(llm):
    prompt = "The quarterly revenue"
    (free,) = llm.generate([prompt], SamplingParams(max_tokens=12, **GREEDY))
    stop_id = free.token_ids[4]
    (by_id,) = llm.generate([prompt], SamplingParams(max_tokens=12, stop_token_ids=[stop_id], **GREEDY))
    assert by_id.token_ids == free.token_ids[:free.token_ids.index(stop_id) + 1] and by_id.finish_reason == "stop"
    stop_text = free.text[len(free.text) // 2:][:3]
    (by_text,) = llm.generate([prompt], SamplingParams(max_tokens=12, stop=[stop_text], **GREEDY))
    assert by_text.finish_reason == "stop" and by_text.text == free.text[:free.text.index(stop_text)]
    assert free.token_ids[:len(by_text.token_ids)] == by_text.token_ids


def test_seeded_sampling_repeats_and_ignores_its_neighbours(llm):
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=123, ignore_eos=True)
    alone = llm.generate(["Der Vertrag"], params)[0].token_ids
    crowd = llm.generate(["El precio", "Der Vertrag", "1 2 3"],
                         [SamplingParams(max_tokens=10, temperature=1.0), params, SamplingParams(max_tokens=5)])
    other = llm.generate(["Der Vertrag"], SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=124, ignore_eos=True))
    assert crowd[1].token_ids == alone and other[0].token_ids != alone


def test_abort_frees_the_request_blocks(llm):
    engine = llm.engine
    request_id = engine.add_request("The quarterly revenue rose", SamplingParams(max_tokens=50, **GREEDY))
    engine.step()
    assert engine.block_manager.num_used_blocks > 0
    engine.abort(request_id)
    assert not engine.has_unfinished() and engine.block_manager.num_used_blocks == 0


def test_limits_fail_with_clear_errors(llm, tiny_llama_dir):
    with pytest.raises(QfidError, match="context limit"):
        llm.generate([[5] * 600], SamplingParams(max_tokens=1))
    with pytest.raises(QfidError, match="does not fit in the KV cache"):
        LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=2).generate([[5] * 40], SamplingParams(max_tokens=1))
    with pytest.raises(QfidError, match="dtype"):
        LLM(tiny_llama_dir, dtype="int8")
    assert not llm.engine.has_unfinished()


def _tiny_variant(path, architecture: str, **config_overrides):
    """A tiny Llama-family model of another flavour, saved with the test tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from qfid.testing.tiny import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[architecture]
    config = config_class(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                          tie_word_embeddings=True, **config_overrides)
    model = model_class(config).eval()
    for name, param in model.named_parameters():
        if name.endswith("bias"):  # zero-initialised: make Qwen2's q/k/v biases matter
            param.data.normal_(0, 0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("architecture, overrides", [("llama", {"rope_parameters": LLAMA3_ROPE}), ("qwen2", {})],
                         ids=["llama3-rope", "qwen2-bias"])
def test_other_llama_family_variants_match_hf(tmp_path, architecture, overrides):
    path, hf_model = _tiny_variant(tmp_path, architecture, **overrides)
    hf_model.generation_config.eos_token_id = None
    prompt = torch.randint(3, hf_model.config.vocab_size, (150,), generator=torch.Generator().manual_seed(3)).tolist()
    (output,) = LLM(path, dtype="float32", num_kv_blocks=16).generate([prompt], SamplingParams(max_tokens=16, logprobs=0, **GREEDY))
    expected = hf_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert output.token_ids == expected[0, len(prompt):].tolist()
    with torch.no_grad():
        reference = hf_model(torch.tensor([prompt + output.token_ids])).logits[0].log_softmax(-1)
    got = torch.tensor([entry[token] for entry, token in zip(output.logprobs, output.token_ids)])
    want = reference[len(prompt) - 1:-1].gather(1, torch.tensor(output.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("model, scheme, fmt", [
    ("llama", "rtn-int4", "autoawq"),
    ("llama", "rtn-int4", "compressed-tensors"),
    ("llama", "fp8", None),
    ("mixtral", "rtn-int4", "autoawq"),
])
def test_quantized_checkpoints_match_hf_with_the_same_quantized_modules(request, tmp_path, model, scheme, fmt):
    """qfid's INT4 / FP8 checkpoints run on the engine through the quantizer's own Linear
    modules (q/k/v and gate/up concatenated into one where the format allows), each bound
    to its kernel; greedy
    tokens equal `generate` of the same loaded, unconcatenated model."""
    from qfid.config import QuantConfig
    from qfid.quant.formats import load_quantized_or_dense
    from qfid.quant.pipeline import quantize_model

    source = request.getfixturevalue(f"tiny_{model}_dir")
    quantize_model(str(source), QuantConfig(scheme=scheme, format=fmt, calib_samples=2, calib_seq_len=64), tmp_path / "q")
    reference = load_quantized_or_dense(tmp_path / "q")
    reference.generation_config.eos_token_id = None
    prompt = list(range(5, 45))
    llm = LLM(tmp_path / "q", dtype="float32", num_kv_blocks=16)
    attention = llm.engine.model_runner.model.layers[0].attention
    assert attention.o_proj.kind in ("Int4Linear", "Fp8Linear")   # bound to its kernel (layers/packed_linear.py)
    if scheme == "rtn-int4":
        assert attention.qkv_proj.fused.kind == "Int4Linear"
    (output,) = llm.generate([prompt], SamplingParams(max_tokens=12, **GREEDY))
    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert output.token_ids == expected[0, len(prompt):].tolist()


def test_stream_deltas_hold_back_incomplete_characters_and_possible_stop_strings():
    from qfid.engine.detokenizer import TextDeltas

    deltas = TextDeltas(stops=("END",))  # the last len("END") - 1 characters wait
    assert deltas.delta("Hello E", finished=False) == "Hello"
    assert deltas.delta("Hello EN", finished=False) == " "
    assert deltas.delta("Hello EXT", finished=False) == "E"
    assert deltas.delta("Hello EXTRA", finished=True) == "XTRA"
    plain = TextDeltas()
    assert plain.delta("caf\ufffd", finished=False) == "caf" and plain.delta("café", finished=False) == "é"
