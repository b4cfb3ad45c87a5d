"""The engine on the default model (SmolLM2-135M-Instruct, fp32) against HF transformers:
greedy tokens equal `generate` token for token for a few concurrent requests of different
lengths (one long enough to be chunked), and logprobs agree within 1e-4."""
from __future__ import annotations

import pytest
import torch

from qfid import LLM, SamplingParams
from tests.tiny.test_engine_greedy import one_thread  # noqa: F401 (autouse: one torch thread, fast on a shared CPU)

pytestmark = pytest.mark.real

PROMPTS = [
    "The capital of France is",
    "A loan of $10,000 at 5% simple interest for 3 years earns",
    "def fibonacci(n):\n    ",
    "The tenant shall pay rent on the first day of each month unless the landlord agrees otherwise. " * 6
    + "In plain words, this clause means that",
]


def test_default_model_greedy_matches_hf(default_model_dir):
    from transformers import AutoModelForCausalLM

    llm = LLM(default_model_dir, dtype="float32", max_num_batched_tokens=64, num_kv_blocks=64)
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=1)
    outputs = llm.generate(PROMPTS, params)
    hf_model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    for output in outputs:
        prompt = output.prompt_token_ids
        expected = hf_model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
        assert output.token_ids == expected.tolist()
        with torch.no_grad():
            reference = hf_model(torch.tensor([prompt + output.token_ids])).logits[0].log_softmax(-1)
        rows = reference[len(prompt) - 1:len(prompt) - 1 + len(output.token_ids)]
        want = rows.gather(1, torch.tensor(output.token_ids)[:, None]).squeeze(1)
        got = torch.tensor([entry[token] for entry, token in zip(output.logprobs, output.token_ids)])
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
