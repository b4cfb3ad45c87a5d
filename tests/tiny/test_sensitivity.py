"""Layer sensitivity (qfid.quant.sensitivity), measured directly: the KL of the final
next-token distributions when one fused unit alone carries its quantized weights.

- `effective_weights` undoes AWQ's folding: the fp model holding them everywhere computes
  what the quantized checkpoint computes (logits within 1e-4);
- a unit made deliberately fragile ranks first;
- keeping the top-N units lowers the final-logit KL more than keeping N random units
  (averaged over 5 seeds)."""
from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from qfid.config import QuantConfig
from qfid.models.loading import load_dense_model, model_arch, read_config
from qfid.quant.formats import load_quantized_or_dense
from qfid.quant.pipeline import quantize_model
from qfid.quant.sensitivity import _mean_kl, effective_weights, measure_sensitivity

CALIB = {"calib_samples": 2, "calib_seq_len": 64}
IDS = torch.randint(3, 200, (2, 64), generator=torch.Generator().manual_seed(1))
FRAGILE = ("model.layers.1.mlp.down_proj",)


@pytest.fixture(scope="module")
def four_layer_llama(tmp_path_factory):
    from qfid.testing.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("llama4"), layers=4, seed=3)


def _logits_kl(source, checkpoint) -> float:
    fp, _ = load_dense_model(source)
    with torch.no_grad():
        ref = fp(IDS).logits.reshape(-1, fp.config.vocab_size).float().log_softmax(-1)
        got = load_quantized_or_dense(checkpoint)(IDS).logits.reshape(ref.shape).float().log_softmax(-1)
    return _mean_kl(ref, got)


def test_effective_weights_compute_what_the_awq_checkpoint_computes(tiny_llama_dir, tmp_path):
    out = quantize_model(str(tiny_llama_dir), QuantConfig(scheme="awq-int4", **CALIB), tmp_path / "awq").output_dir
    weights = effective_weights(out, model_arch(read_config(tiny_llama_dir)))
    model, _ = load_dense_model(tiny_llama_dir)
    for name, w in weights.items():
        model.get_submodule(name).weight.data = w
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, load_quantized_or_dense(out)(IDS).logits, rtol=1e-4, atol=1e-4)


def test_a_fragile_unit_ranks_first(four_layer_llama, tmp_path):
    """An outlier in every INT4 group of one down_proj row block crushes the group's other
    weights to a few levels: that unit's quantization error dwarfs the others'."""
    source = tmp_path / "fragile"
    source.mkdir()
    for f in four_layer_llama.iterdir():
        if f.suffix != ".safetensors":
            (source / f.name).write_bytes(f.read_bytes())
    tensors = load_file(four_layer_llama / "model.safetensors")
    w = tensors[f"{FRAGILE[0]}.weight"].clone()
    w[:, ::32] *= 40.0
    tensors[f"{FRAGILE[0]}.weight"] = w
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    out = quantize_model(str(source), QuantConfig(scheme="rtn-int4", group_size=32), tmp_path / "rtn").output_dir
    scores = measure_sensitivity(source, out, IDS)
    assert len(scores) == 16 and scores[0].unit == FRAGILE
    assert scores[0].kl > 1.5 * scores[1].kl and all(s.kl >= 0 for s in scores)


def test_keeping_the_top_units_beats_keeping_random_ones(four_layer_llama, tmp_path):
    base = quantize_model(str(four_layer_llama), QuantConfig(scheme="rtn-int4", group_size=128), tmp_path / "base").output_dir
    scores = measure_sensitivity(four_layer_llama, base, IDS)
    n = 3

    def kl_keeping(units, name) -> float:
        keep = [layer for unit in units for layer in unit]
        out = quantize_model(str(four_layer_llama), QuantConfig(scheme="rtn-int4", group_size=128, keep=keep, keep_as="bf16"),
                             tmp_path / name).output_dir
        return _logits_kl(four_layer_llama, out)

    top = kl_keeping([s.unit for s in scores[:n]], "top")
    random_kls = [kl_keeping(random.Random(seed).sample([s.unit for s in scores], n), f"random{seed}") for seed in range(5)]
    assert top < sum(random_kls) / len(random_kls)
    assert top < _logits_kl(four_layer_llama, base)
