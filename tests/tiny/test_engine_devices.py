"""Every tensor an engine step creates lives on the engine's device, except the host-side
input staging (`ModelRunner.stage`): recorded op by op with a TorchDispatchMode over whole
`step()` calls (prefill, decode, sampling with a seeded generator, logprobs). On a CPU-only
machine the engine's device is the CPU and the check can only confirm the recording; on a
GPU (the device check script runs this file there) it catches a stray CPU tensor, which
would mean a host round trip inside the step.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from qfid import LLM, SamplingParams
from qfid.engine.model_runner import ModelRunner

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class DeviceRecorder(TorchDispatchMode):
    """(op, device) of every tensor an op returns, and whether it ran inside the staging."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[str, torch.device, bool]] = []
        self.staging = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.records.append((str(func), value.device, self.staging))
        return out


def test_a_step_creates_tensors_only_on_the_engine_device(tiny_llama_dir, monkeypatch):
    llm = LLM(tiny_llama_dir, dtype="float32", device=DEVICE, num_kv_blocks=32)
    engine_device = llm.engine.model_runner.device
    recorder = DeviceRecorder()
    original_stage = ModelRunner.stage

    def staged(self, batch):
        recorder.staging = True
        try:
            return original_stage(self, batch)
        finally:
            recorder.staging = False

    monkeypatch.setattr(ModelRunner, "stage", staged)
    params = [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=2, prompt_logprobs=1),
              SamplingParams(max_tokens=6, temperature=0.8, top_k=20, top_p=0.9, seed=3, ignore_eos=True)]
    for prompt, param in zip([[5, 9, 14, 2, 7] * 7, [3, 8, 1]], params):
        llm.engine.add_request(prompt, param)
    steps = 0
    with recorder:
        while llm.engine.has_unfinished():
            llm.engine.step()
            steps += 1
    assert steps >= 6
    outside = [(op, device) for op, device, staging in recorder.records if not staging]
    assert len(outside) > 100       # the forward's ops were seen
    stray = sorted({(op, str(device)) for op, device in outside if device != engine_device})
    assert not stray, f"tensors created off {engine_device} during a step: {stray[:10]}"


def test_the_gpus_sync_free_moe_equals_the_expert_loop(tiny_mixtral_dir):
    """On CUDA every expert runs over every token (weight 0 where not chosen), so no expert ids
    are read back to the host; the result equals the CPU's loop over the chosen experts."""
    from qfid.layers.model import build_runtime_model
    from qfid.layers.moe import moe_layers
    from qfid.quant.formats import load_quantized_or_dense

    runtime = build_runtime_model(load_quantized_or_dense(tiny_mixtral_dir))
    moe = moe_layers(runtime)[0]
    x = torch.randn(37, runtime.config.hidden_size, generator=torch.Generator().manual_seed(0))
    weights, experts = moe.route(x)
    torch.testing.assert_close(moe._all_experts(x, weights, experts), moe(x), rtol=1e-6, atol=1e-7)
