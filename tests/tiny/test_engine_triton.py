"""The engine's CUDA attention path through the engine itself (its metadata and cache
layout): Triton paged decode attention with the KV length split into one-block pieces,
and SDPA prefill chunks, under TRITON_INTERPRET=1 on CPU tensors (compiled on a GPU when
torch sees one). Against the torch backend on the same weights in fp32, for concurrent
requests whose contexts span several blocks: greedy tokens equal, and every logprob the
two return (generated tokens' top-3 from decode steps, prompt tokens' from prefill chunks)
within 1e-4. The Triton kernel's dots are elementwise fp32 products summed in fp32 (no
tensor-core TF32), so the tolerance is the torch path's own.
"""
from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"   # conftest sets it on a CPU
pytest.importorskip("triton")

from qfid import LLM, SamplingParams  # noqa: E402

TOLERANCE = 1e-4
DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(scope="module", params=["llama", "mixtral"])
def model_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 40, 71, 23, 100, 52)]


def _run(model_dir, attention: str) -> tuple[list, LLM]:
    llm = LLM(model_dir, dtype="float32", device=DEVICE, attention=attention, num_kv_blocks=64,
              max_num_batched_tokens=96, block_size=16)
    if attention == "triton":
        llm.engine.model_runner.attention.blocks_per_split = 1
    prompts = _prompts(llm.engine.vocab_size)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=3, prompt_logprobs=1)
    return llm.generate(prompts, params), llm


def test_triton_decode_and_sdpa_prefill_match_the_torch_backend(model_dir, monkeypatch):
    from qfid.kernels import triton_ops

    widths = []
    original = triton_ops.paged_attention_decode

    def spy(q, k_cache, v_cache, tables, lens, scale, blocks_per_split=None):
        widths.append((tables.shape[1], blocks_per_split))
        return original(q, k_cache, v_cache, tables, lens, scale, blocks_per_split)

    monkeypatch.setattr(triton_ops, "paged_attention_decode", spy)
    triton_outputs, llm = _run(model_dir, "triton")
    assert llm.engine.model_runner.attention.name == "triton"
    # the decode kernel saw tables several blocks wide (a 100-token prompt plus decodes: 7) in one-block splits
    assert widths and all(split == 1 for _, split in widths) and max(width for width, _ in widths) >= 7
    torch_outputs, _ = _run(model_dir, "torch")
    for got, want in zip(triton_outputs, torch_outputs):
        assert got.token_ids == want.token_ids
        for got_entry, want_entry in zip(got.logprobs + got.prompt_logprobs[1:], want.logprobs + want.prompt_logprobs[1:]):
            assert got_entry.keys() == want_entry.keys()
            assert max(abs(got_entry[t] - want_entry[t]) for t in want_entry) < TOLERANCE
