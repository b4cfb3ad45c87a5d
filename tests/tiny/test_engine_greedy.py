"""The engine against HF transformers on the same weights (tiny random Llama and Mixtral, fp32):
greedy tokens equal `generate(do_sample=False)` token for token, and logprobs / prompt
logprobs equal log_softmax of HF's logits within 1e-4 — for one request, and for 32
concurrent requests of mixed lengths under chunked prefill, forced preemption and prefix
caching."""
from __future__ import annotations

import pytest
import torch

from qfid import LLM, SamplingParams

LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls only pay thread fan-out on a shared CPU; results do not change."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["llama", "mixtral"])
def model_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # compare full lengths (the engine ignores EOS here)
    return model


def hf_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def hf_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """[len, vocab] log_softmax of HF's logits; row p scores token p + 1."""
    return model(torch.tensor([tokens])).logits[0].float().log_softmax(-1)


def random_prompts(vocab: int, lengths: list[int], seed: int = 0, prefix: list[int] = ()) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def check_logprobs(model, prompt: list[int], output, top: int) -> None:
    reference = hf_logprobs(model, prompt + output.token_ids)
    for i, (token, entry) in enumerate(zip(output.token_ids, output.logprobs)):
        row = reference[len(prompt) - 1 + i]
        assert list(entry)[0] == token and len(entry) >= top
        for candidate, value in entry.items():
            assert abs(value - row[candidate].item()) < LOGPROB_TOLERANCE
        assert set(row.topk(top).indices.tolist()) <= set(entry)
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt)
    for position in range(1, len(prompt)):
        value = output.prompt_logprobs[position][prompt[position]]
        assert abs(value - reference[position - 1, prompt[position]].item()) < LOGPROB_TOLERANCE


@pytest.fixture(params=["cpu-kernel", "torch"])
def decode_path(request, monkeypatch):
    """Both decode-attention paths: qfid's CPU paged-attention kernel (the default where it
    builds) and the torch gather path (what QFID_KERNEL=reference selects)."""
    if request.param == "torch":
        monkeypatch.setenv("QFID_KERNEL", "reference")
    else:
        from qfid.kernels.cpu_build import load_cpu_ops

        if not load_cpu_ops():
            pytest.skip("qfid CPU kernels unavailable here")
    return request.param


def _check_path(llm, decode_path: str) -> None:
    assert llm.engine.model_runner.attention.name == ("cpu" if decode_path == "cpu-kernel" else "torch")


def test_one_request_matches_hf_tokens_and_logprobs(model_dir, hf_model, decode_path):
    llm = LLM(model_dir, dtype="float32", num_kv_blocks=32)
    _check_path(llm, decode_path)
    prompt = random_prompts(hf_model.config.vocab_size, [37])[0]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    (output,) = llm.generate([prompt], params)
    assert output.token_ids == hf_greedy(hf_model, prompt, 24)
    assert output.finish_reason == "length"
    check_logprobs(hf_model, prompt, output, top=3)


def test_32_concurrent_requests_with_chunked_prefill_and_preemption(model_dir, hf_model, decode_path):
    vocab = hf_model.config.vocab_size
    lengths = [3, 100, 17, 64, 9, 45, 80, 1, 33, 56, 120, 12, 70, 28, 5, 90]
    prompts = random_prompts(vocab, lengths, seed=1)
    prompts += random_prompts(vocab, [l // 2 + 1 for l in lengths], seed=2, prefix=prompts[10][:48])  # shared prefix
    max_tokens = [8 + (7 * i) % 17 for i in range(32)]
    # 24 blocks x 16 = 384 slots for ~2,600 tokens of demand; a 64-token budget chunks the long prompts
    llm = LLM(model_dir, dtype="float32", num_kv_blocks=24, max_num_batched_tokens=64)
    _check_path(llm, decode_path)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=1, prompt_logprobs=0 if i % 4 == 0 else None)
              for i, n in enumerate(max_tokens)]
    outputs = llm.generate(prompts, params)
    scheduler, blocks = llm.engine.scheduler, llm.engine.block_manager
    assert scheduler.num_preemptions > 0 and blocks.prefix_hits > 0
    assert blocks.num_free_blocks == blocks.num_blocks
    for prompt, n, output in zip(prompts, max_tokens, outputs):
        assert output.token_ids == hf_greedy(hf_model, prompt, n)
        reference = hf_logprobs(hf_model, prompt + output.token_ids)
        for i, (token, entry) in enumerate(zip(output.token_ids, output.logprobs)):
            assert abs(entry[token] - reference[len(prompt) - 1 + i, token].item()) < LOGPROB_TOLERANCE
        if output.prompt_logprobs is not None:
            expected = [reference[p - 1, prompt[p]].item() for p in range(1, len(prompt))]
            got = [output.prompt_logprobs[p][prompt[p]] for p in range(1, len(prompt))]
            assert len(output.prompt_logprobs) == len(prompt)
            assert all(abs(a - b) < LOGPROB_TOLERANCE for a, b in zip(got, expected))


def test_decode_rows_of_very_different_lengths_split_into_groups(model_dir, hf_model, monkeypatch):
    """Many short and many long sequences decoding together on the torch decode path (the
    CPU kernel is switched off): the rows are grouped by context length (each group padded
    only to its own longest) and still match HF."""
    import qfid.engine.batch_inputs as batch_inputs

    monkeypatch.setenv("QFID_KERNEL", "reference")

    group_counts = []
    split = batch_inputs._length_groups
    monkeypatch.setattr(batch_inputs, "_length_groups", lambda blocks: group_counts.append(len(split(blocks))) or split(blocks))
    vocab = hf_model.config.vocab_size
    prompts = random_prompts(vocab, [6] * 10 + [150] * 10, seed=3)
    llm = LLM(model_dir, dtype="float32", num_kv_blocks=256, max_num_batched_tokens=4096)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, logprobs=0))
    assert max(group_counts) >= 2
    for prompt, output in zip(prompts, outputs):
        assert output.token_ids == hf_greedy(hf_model, prompt, 5)
        reference = hf_logprobs(hf_model, prompt + output.token_ids)
        for i, (token, entry) in enumerate(zip(output.token_ids, output.logprobs)):
            assert abs(entry[token] - reference[len(prompt) - 1 + i, token].item()) < LOGPROB_TOLERANCE


def test_prompt_logprobs_start_scores_only_the_tail(model_dir, hf_model):
    """Scoring a continuation: positions before `prompt_logprobs_start` read None, the rest
    equal HF's log_softmax, under chunked prefill that splits the prompt."""
    prompt = random_prompts(hf_model.config.vocab_size, [70], seed=5)[0]
    llm = LLM(model_dir, dtype="float32", num_kv_blocks=32, max_num_batched_tokens=32)
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, prompt_logprobs=0, prompt_logprobs_start=66)
    (output,) = llm.generate([prompt], params)
    assert len(output.prompt_logprobs) == len(prompt)
    assert all(entry is None for entry in output.prompt_logprobs[:66])
    reference = hf_logprobs(hf_model, prompt)
    for position in range(66, len(prompt)):
        assert abs(output.prompt_logprobs[position][prompt[position]] - reference[position - 1, prompt[position]].item()) < LOGPROB_TOLERANCE
