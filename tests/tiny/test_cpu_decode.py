"""The CPU's captured decode step (`qfid_cpu::decode_layers`, layers/cpu_decode.py) against
the Python layers it replaces on decode-only steps: bit for bit the same hidden states, so
the same tokens and the same logprob floats, on bf16 models with packed bf16 linears, with
INT4 (RTN) linears and with FP8 ones (dynamic and static activations), with and without
biases, for concurrent requests of mixed lengths (so decode steps hold several sequences
with different contexts and block tables). And qfid's fused E4M3 activation rounding
against the torch chain it replaces, bit for bit."""
from __future__ import annotations

import pytest
import torch

from qfid import LLM, SamplingParams
from qfid.layers.cpu_decode import CpuDecodeLayers


@pytest.fixture(scope="module", autouse=True)
def kernels():
    from qfid.kernels.cpu_build import load_cpu_ops

    if not load_cpu_ops():
        pytest.skip("qfid CPU kernels unavailable here")


@pytest.fixture(scope="module")
def biased_llama_dir(tmp_path_factory):
    """A tiny Llama with q/k/v/o and MLP biases (Qwen2 has q/k/v biases)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from qfid.testing.tiny import build_tokenizer

    torch.manual_seed(1)
    tokenizer = build_tokenizer(512)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
                         attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("biased-llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def checkpoint(source, out, scheme: str = "rtn-int4", **options):
    from qfid.quant.pipeline import QuantConfig, quantize_model

    if scheme == "rtn-int4":
        options.setdefault("group_size", 32)
    if not out.exists():
        quantize_model(str(source), QuantConfig(scheme=scheme, calib_samples=2, calib_seq_len=64, **options), out)
    return out


class Counted:
    """The captured step, recording each call's rows."""

    def __init__(self, step: CpuDecodeLayers, calls: list):
        self.step, self.calls, self.covers = step, calls, step.covers

    def __call__(self, x, *rest):
        self.calls.append(x.shape[0])
        return self.step(x, *rest)


def generate_both_ways(model_dir) -> tuple[list, list, int]:
    """(outputs with the captured step, outputs with the Python layers, captured calls), each
    from a fresh engine, so both schedule the same steps (no prefix-cache hits in the second)."""
    prompts = [torch.randint(3, 400, (n,), generator=torch.Generator().manual_seed(n)).tolist()
               for n in (3, 9, 17, 30, 45, 64)]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, logprobs=3)
    outputs, calls = [], []
    for captured in (True, False):
        llm = LLM(str(model_dir), dtype="bfloat16", max_num_seqs=8)
        runtime = llm.engine.model_runner.model
        assert runtime.captured_decode is not None, "the captured step should cover this model"
        runtime.captured_decode = Counted(runtime.captured_decode, calls) if captured else None
        outputs.append(llm.generate(prompts, params))
    return outputs[0], outputs[1], len(calls)


def assert_identical(first, second):
    for a, b in zip(first, second):
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs   # every float equal: the same logits bit for bit


@pytest.mark.parametrize("scheme, options", [(None, {}), ("rtn-int4", {}), ("fp8", {"fp8_activations": "dynamic"}),
                                             ("fp8", {"fp8_activations": "static"})],
                         ids=["bf16", "int4", "fp8-dynamic", "fp8-static"])
def test_captured_step_equals_python_layers(tiny_llama_dir, tmp_path_factory, scheme, options):
    model_dir = tiny_llama_dir
    if scheme:
        model_dir = checkpoint(tiny_llama_dir, tmp_path_factory.mktemp(scheme) / "q", scheme, **options)
    captured, eager, calls = generate_both_ways(model_dir)
    assert calls >= 19   # every decode-only step ran captured
    assert_identical(captured, eager)


def test_captured_step_with_biases(biased_llama_dir, tmp_path_factory):
    for model_dir in (biased_llama_dir, checkpoint(biased_llama_dir, tmp_path_factory.mktemp("rtn-b") / "q")):
        captured, eager, calls = generate_both_ways(model_dir)
        assert calls >= 19
        assert_identical(captured, eager)


def test_not_built_where_it_does_not_apply(tiny_mixtral_dir, tiny_llama_dir, monkeypatch):
    assert LLM(str(tiny_mixtral_dir), dtype="bfloat16").engine.model_runner.model.captured_decode is None   # MoE
    eager = LLM(str(tiny_llama_dir), dtype="bfloat16", enforce_eager=True)   # asked for the Python layers
    assert eager.engine.model_runner.model.captured_decode is None
    monkeypatch.setenv("QFID_KERNEL", "reference")   # the torch path everywhere: nothing to capture
    assert LLM(str(tiny_llama_dir), dtype="bfloat16").engine.model_runner.model.captured_decode is None


def test_covers_only_decode_steps():
    from qfid.layers.attention import AttentionMetadata

    tables, lens = torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    decode = AttentionMetadata(torch.zeros(2, dtype=torch.long), 2, decode_tables=tables, decode_lens=lens)
    mixed = AttentionMetadata(torch.zeros(5, dtype=torch.long), 2, decode_tables=tables, decode_lens=lens)
    assert CpuDecodeLayers.covers(decode, 2) and not CpuDecodeLayers.covers(mixed, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_activation_rounding_equals_the_torch_chain(dtype):
    from qfid.layouts.primitives import fp8_fake_quantize_activation

    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 576), (7, 1536), (3, 5, 64)]:
        # magnitudes from 1e-8 to 1e3 across a row: subnormal E4M3 codes, clamping, zeros
        x = (torch.randn(shape, generator=generator) * torch.logspace(-8, 3, shape[-1])).to(dtype)
        rows = x.view(-1, shape[-1])
        rows[0, :5] = 0
        rows[-1] = 0   # an all-zero row: the dynamic scale's 1e-12 floor
        for scale in (None, torch.tensor([0.37]), torch.tensor(1e-3)):
            got = torch.ops.qfid_cpu.fp8_round_activations(x, scale)
            expected = fp8_fake_quantize_activation(x, scale)
            assert got.dtype == expected.dtype and torch.equal(got, expected)


def _e4m3_ties() -> torch.Tensor:
    """Every finite E4M3 value, the midpoints between neighbours (exact ties, where rounding
    goes to the even code) and values just either side of each midpoint, both signs."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = codes[torch.isfinite(codes)].unique()
    mids = (values[1:] + values[:-1]) / 2
    near = torch.cat([values, mids, torch.nextafter(mids, torch.full_like(mids, -1e9)),
                      torch.nextafter(mids, torch.full_like(mids, 1e9))])
    return torch.cat([near, -near])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_activation_rounding_covers_every_code_and_tie(dtype):
    """The vectorised rounding against the torch chain on every value of a 16-bit dtype
    (all 65,536 bit patterns but NaN) and on fp32 ties: normal and subnormal codes, ties to
    even, clamping, signed zeros, infinities."""
    from qfid.layouts.primitives import fp8_fake_quantize_activation

    if dtype == torch.float32:
        x = _e4m3_ties()
    else:
        x = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
        x = x[~torch.isnan(x.float())]
    assert x.numel() % 16   # the one-row (static) cases end in a scalar tail too
    for scale in (None, torch.tensor([1.0]), torch.tensor([0.37]), torch.tensor(3e-3), torch.tensor(1e-6)):
        rows = x.view(1, -1) if scale is not None else x[: x.numel() // 7 * 7].view(7, -1)
        got = torch.ops.qfid_cpu.fp8_round_activations(rows, scale)
        expected = fp8_fake_quantize_activation(rows, scale)
        _assert_same_bits_or_nan(got, expected)


def _assert_same_bits_or_nan(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal bit for bit, but NaN for NaN (whose payload torch's ops do not fix: its
    vectorised chain gives 0xFFFF in bf16 where a scalar conversion gives 0x7FC0)."""
    bits = {2: torch.int16, 4: torch.int32}[got.element_size()]
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got.view(bits)[~nan], expected.view(bits)[~nan])


def test_fp8_activation_rounding_keeps_nan_where_torch_does():
    from qfid.layouts.primitives import fp8_fake_quantize_activation

    x = torch.linspace(-3, 3, 40).bfloat16().view(1, -1)
    x[0, 5] = float("nan")
    for scale in (None, torch.tensor([0.5])):
        got = torch.ops.qfid_cpu.fp8_round_activations(x, scale)
        expected = fp8_fake_quantize_activation(x, scale)
        _assert_same_bits_or_nan(got, expected)
        assert got.isnan().sum() == (x.numel() if scale is None else 1)   # dynamic: the row's scale is NaN
