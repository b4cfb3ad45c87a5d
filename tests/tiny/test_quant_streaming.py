"""The streamed `qfid quantize` against what the pre-streaming, whole-model code wrote
(tests/data/quant_reference, committed before the change): RTN and FP8 (static and dynamic)
weights bit for bit and static activation scales to fp32 rounding, AWQ with the same scales
(so the same grid points), the same clip steps and the same codes, to stated tolerances:
the reference was written on an AVX2 CPU, and an AVX-512 CPU's matmuls round differently
(measured on a Zen 4: input scales within 1.4e-7 relative; in three layers one row of 64
at another clip step, a near-tie, and that row's codes).
Also: a sharded source quantizes like an unsharded one, a bf16 source keeps its dtype, an
interrupted run resumes at the next block, a starved MoE expert falls back to RTN."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qfid.config import QuantConfig
from qfid.quant import pipeline
from qfid.quant.pipeline import quantize_model

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "quant_reference"
sys.path.insert(0, str(REFERENCE.parent))
from build_quant_reference import CASES, MOE_CASES  # noqa: E402

ALL = [(f, c) for f in ("llama", "mixtral") for c in CASES if f == "llama" or c in MOE_CASES]
CLIP_STEP = 0.025           # awq_search: 20 steps of 2.5% shrink
CLIP_ROWS_MOVED_MAX = 0.05  # AWQ: share of a layer's rows whose clip may sit one step away (a near-tie)
CODE_MISMATCH_MAX = 0.02    # AWQ: share of packed INT4 words allowed to differ (those rows' codes)
CALIBRATED_RTOL = 1e-6      # static FP8 input scales: a max over activations, fp32 rounding apart


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch):
    """fp32 scoring (the reference's machine had no native bf16) and one thread."""
    import qfid.quant.awq_block as awq_block

    monkeypatch.setattr(awq_block, "scoring_dtype", lambda: torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in folder.glob("*.safetensors"):
        out.update(load_file(path))
    return out


def _quantize(source: Path, out: Path, case: str, **kwargs) -> Path:
    quantize_model(str(source), QuantConfig(**CASES[case]), out, device="cpu", **kwargs)
    return out


@pytest.mark.parametrize("family, case", ALL)
def test_streamed_checkpoint_equals_the_pre_change_one(family, case, tmp_path):
    ref_dir = REFERENCE / family / case
    out = _quantize(REFERENCE / family / "source", tmp_path / case, case)
    ref, new = _tensors(ref_dir), _tensors(out)
    assert new.keys() == ref.keys()
    assert {k: (v.dtype, v.shape) for k, v in new.items()} == {k: (v.dtype, v.shape) for k, v in ref.items()}
    qc = lambda d: json.loads((d / "config.json").read_text())["quantization_config"]  # noqa: E731
    ref_qc, new_qc = qc(ref_dir), qc(out)
    ref_qc.pop("version", None), new_qc.pop("version", None)
    assert new_qc == ref_qc
    if case != "awq":
        weights = [k for k in ref if not k.endswith("input_scale")]
        assert all(torch.equal(_bytes(new[k]), _bytes(ref[k])) for k in weights), "RTN / FP8 must be bit for bit"
        for key in (k for k in ref if k.endswith("input_scale")):
            torch.testing.assert_close(new[key], ref[key], rtol=CALIBRATED_RTOL, atol=0)
        return
    _assert_same_awq(ref_dir, out, ref, new)


def _assert_same_awq(ref_dir: Path, out: Path, ref: dict, new: dict) -> None:
    ref_art = load_file(ref_dir / "qfid" / "awq_artifact.safetensors")
    new_art = load_file(out / "qfid" / "awq_artifact.safetensors")
    assert new_art.keys() == ref_art.keys()
    for key in (k for k in ref_art if k.endswith("awq_scale")):
        torch.testing.assert_close(new_art[key], ref_art[key], rtol=1e-4, atol=0)   # same grid point
    for key in (k for k in ref_art if k.endswith("awq_clip")):
        assert torch.equal(new_art[key], ref_art[key]) or _same_clip_steps(new_art[key], ref_art[key]), key
    codes = [k for k in ref if k.endswith(("qweight", "qzeros"))]
    differing = sum(int((new[k] != ref[k]).sum()) for k in codes)
    assert differing <= CODE_MISMATCH_MAX * sum(ref[k].numel() for k in codes)
    for key in (k for k in ref if not k.endswith(("qweight", "qzeros", "scales"))):
        torch.testing.assert_close(new[key], ref[key], rtol=1e-5, atol=1e-7)   # norms with folded scales


def _same_clip_steps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Clip values are max|w| * (1 - step * 2.5%): the same step means a ratio within rounding.
    All but CLIP_ROWS_MOVED_MAX of the rows at the same step (a flat loss curve can put a
    near-tie several steps apart)."""
    ratio = (a / b).flatten()
    return float(((ratio - 1).abs() < CLIP_STEP / 2).float().mean()) >= 1 - CLIP_ROWS_MOVED_MAX


def _copy_with(source: Path, target: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = 10**9,
               config: dict | None = None) -> Path:
    """A copy of a source checkpoint folder holding `tensors` (sharded) and `config`."""
    from qfid.utils.safetensors_stream import write_tensors

    target.mkdir()
    for side in source.iterdir():
        if side.suffix != ".safetensors":
            shutil.copy(side, target / side.name)
    if config is not None:
        (target / "config.json").write_text(json.dumps(config))
    write_tensors(target, tensors, max_shard_bytes)
    return target


def _sharded_copy(source: Path, target: Path, max_shard_bytes: int) -> Path:
    return _copy_with(source, target, load_file(source / "model.safetensors"), max_shard_bytes)


@pytest.mark.parametrize("case", ["rtn", "awq"])
def test_sharded_source_quantizes_like_an_unsharded_one(case, tmp_path):
    source = REFERENCE / "llama" / "source"
    sharded = _sharded_copy(source, tmp_path / "sharded-src", 60_000)
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 3
    a = _tensors(_quantize(source, tmp_path / "a", case))
    b = _tensors(_quantize(sharded, tmp_path / "b", case))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_output_is_sharded_with_an_index(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_SHARD_BYTES", 100_000)
    out = _quantize(REFERENCE / "llama" / "source", tmp_path / "q", "rtn")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 2 and set(index["weight_map"].values()) == set(files)
    ref = _tensors(REFERENCE / "llama" / "rtn")
    new = _tensors(out)
    assert new.keys() == ref.keys() and all(torch.equal(new[k], ref[k]) for k in ref)


def test_bf16_source_keeps_its_dtype_and_its_dense_tensors(tmp_path):
    source = REFERENCE / "llama" / "source"
    dense = {k: v.bfloat16() for k, v in load_file(source / "model.safetensors").items()}
    bf16 = _copy_with(source, tmp_path / "bf16-src", dense)
    out = _tensors(_quantize(bf16, tmp_path / "q", "rtn"))
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.0.input_layernorm.weight"):
        assert out[name].dtype == torch.bfloat16 and torch.equal(out[name], dense[name]), name


def test_interrupted_run_resumes_at_the_next_block(tmp_path, monkeypatch):
    source = REFERENCE / "llama" / "source"
    expected = _tensors(_quantize(source, tmp_path / "clean", "awq"))
    original = pipeline._Run._block
    calls: list[int] = []

    def crash_on_block_1(self, i, streams):
        calls.append(i)
        if i == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt
        return original(self, i, streams)

    monkeypatch.setattr(pipeline._Run, "_block", crash_on_block_1)
    target = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _quantize(source, target, "awq")
    assert not target.exists() and (tmp_path / ".resumed.partial" / "qfid_resume.json").is_file()
    _quantize(source, target, "awq")
    assert calls == [0, 1, 1]                     # block 0 was not quantized again
    resumed = _tensors(target)
    assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert not (tmp_path / ".resumed.partial").exists()


def test_other_arguments_start_over(tmp_path, monkeypatch):
    source = REFERENCE / "llama" / "source"
    partial = tmp_path / ".q.partial"
    partial.mkdir()
    (partial / "qfid_resume.json").write_text(json.dumps({"fingerprint": {"other": 1}, "blocks_done": 1}))
    (partial / "stale.safetensors").write_bytes(b"x")
    _quantize(source, tmp_path / "q", "rtn")
    assert not (tmp_path / "q" / "stale.safetensors").exists()


def test_failure_before_any_block_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, i, streams):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline._Run, "_block", broken)
    with pytest.raises(RuntimeError, match="boom"):
        _quantize(REFERENCE / "llama" / "source", tmp_path / "q", "rtn")
    assert list(tmp_path.iterdir()) == []


def test_starved_experts_fall_back_to_rtn_with_a_warning(tmp_path, monkeypatch):
    import qfid.quant.awq as awq
    from qfid.layouts.packing import unpack_awq_gemm
    from qfid.layouts.primitives import int4_quantize

    source = REFERENCE / "mixtral" / "source"
    monkeypatch.setattr(awq, "MIN_EXPERT_TOKENS", 10**9)   # every expert counts as starved
    warnings: list[str] = []
    out = _quantize(source, tmp_path / "q", "awq", warn=warnings.append)
    starved = [w for w in warnings if "experts" in w and "plain RTN" in w]
    assert len(starved) == 2 * 4 * 3                      # 2 blocks x 4 experts x w1/w2/w3
    record = json.loads((out / "qfid_quant.json").read_text())
    assert len(record["fallbacks"]) == 24 and all("plain RTN" in why for why in record["fallbacks"].values())
    artifact = load_file(out / "qfid" / "awq_artifact.safetensors")
    assert not [k for k in artifact if ".experts." in k and k.endswith("awq_clip")]
    name = "model.layers.1.block_sparse_moe.experts.2.w2"
    src = load_file(source / "model.safetensors")[f"{name}.weight"]
    t = _tensors(out)
    stored = unpack_awq_gemm(t[f"{name}.qweight"], t[f"{name}.qzeros"], t[f"{name}.scales"], 64)
    assert torch.equal(stored.codes, int4_quantize(src, 64).codes)   # s = 1 and no clip: plain RTN


def test_tied_embeddings_are_neither_quantized_nor_written_twice(tmp_path):
    from qfid.quant.formats import load_quantized_or_dense

    source = REFERENCE / "llama" / "source"
    config = {**json.loads((source / "config.json").read_text()), "tie_word_embeddings": True}
    dense = {k: v for k, v in load_file(source / "model.safetensors").items() if k != "lm_head.weight"}
    tied = _copy_with(source, tmp_path / "tied-src", dense, config=config)
    out = _quantize(tied, tmp_path / "q", "rtn")
    written = _tensors(out)
    assert "lm_head.weight" not in written and not [k for k in written if k.startswith("lm_head.")]
    summary = json.loads((out / "qfid_quant.json").read_text())["summary"]
    assert 1 < summary["ppl_calib_before"] < 1e4 and 1 < summary["ppl_calib_after"] < 1e4
    model = load_quantized_or_dense(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("case", ["awq", "fp8-tensor-static"])
def test_drift_from_the_calibration_pass_equals_a_pass_of_its_own(case, tmp_path, monkeypatch):
    """The fp drift stream taken from the scheme's calibration pass (the drift samples are
    its first batch) gives bit for bit the perplexities of running the drift samples
    through each fp block separately, as the pipeline did before."""
    source = REFERENCE / "llama" / "source"
    taken = []
    real = pipeline._drift_leads_calibration
    monkeypatch.setattr(pipeline, "_drift_leads_calibration", lambda streams: taken.append(real(streams)) or taken[-1])
    reused = json.loads((_quantize(source, tmp_path / "reused", case) / "qfid_quant.json").read_text())["summary"]
    assert taken and all(taken)
    monkeypatch.setattr(pipeline, "_drift_leads_calibration", lambda streams: False)
    separate = json.loads((_quantize(source, tmp_path / "separate", case) / "qfid_quant.json").read_text())["summary"]
    for key in ("ppl_calib_before", "ppl_calib_after"):
        assert reused[key] == separate[key], key
