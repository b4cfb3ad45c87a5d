"""`qfid quantize`, streamed: the model is never whole in memory.

    resolve -> plan (which Linears, group size, every output tensor) -> calibrate ->
    embeddings -> for each decoder block: read it from the shards (stored dtype, upcast
    to fp32 on the compute device), run the fp drift stream through it, quantize it with
    the scheme's handler, write its tensors, run the quantized drift stream, free it ->
    final norm + LM head on both drift streams (perplexity before/after) -> configs,
    tokenizer, qfid_quant.json -> rename into place.

Peak memory is one block plus the calibration activations, whatever the depth. Everything
is written into `.NAME.partial` beside the output, which an interrupted run resumes from
(quant/partial.py). The scheme is a handler from the registry (quant/schemes.py); how its
weights are stored is its codec's business (quant/codecs.py).
"""
from __future__ import annotations

import dataclasses
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qfid import __version__
from qfid.config import QuantConfig
from qfid.errors import QfidError
from qfid.models.checkpoint_source import CheckpointSource
from qfid.models.linears import block_tensor, expand_experts
from qfid.models.loading import check_quantizable, resolve_model_dir
from qfid.models.placement import resolve_device
from qfid.models.streaming import ModelShell
from qfid.quant.block_capture import BlockBatch, capture_block_inputs, run_block
from qfid.quant.block_layout import describe_block
from qfid.quant.codecs import LinearPlan, quantization_config
from qfid.quant.drift import next_token_nll, perplexity_of
from qfid.quant.keep import plan_linears, store_kept
from qfid.quant.partial import PartialCheckpoint
from qfid.layouts.primitives import default_group_size
from qfid.quant.schemes import SCHEMES, BlockJob, BlockOutcome
from qfid.quant.writer import MAX_SHARD_BYTES, CheckpointWriter, write_side_files
from qfid.utils.fs import atomic_write_text
from qfid.utils.memory import release_freed_memory

DRIFT_SAMPLES = 4


@dataclass
class QuantResult:
    """What a quantization run did; the CLI renders it, the benchmark records it."""

    source: str
    output_dir: Path
    config: QuantConfig
    group_size: int | None
    group_size_auto: bool
    layers_quantized: int
    linear_bytes_fp16: int
    linear_bytes_quantized: int
    checkpoint_bytes: int
    ppl_before: float
    ppl_after: float
    calib_description: str
    device: str = "cpu"
    activations_on: str = "cpu"
    fallbacks: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def linear_ratio(self) -> float:
        return self.linear_bytes_quantized / max(self.linear_bytes_fp16, 1)

    @property
    def wall_s(self) -> float:
        return sum(self.timings.values())


def choose_group_size(shapes: dict[str, tuple[int, int]], requested: int | None) -> tuple[int, bool]:
    """The requested group size if it divides every quantized input width, else a clear
    error; with none requested, the model's default (128 or the largest power of two)."""
    widths = {shape[1] for shape in shapes.values()}
    if requested is None:
        return default_group_size(widths), True
    for name, shape in shapes.items():
        if shape[1] % requested:
            fallback = default_group_size(widths, preferred=requested)
            raise QfidError(f"group size {requested} does not divide input width {shape[1]} of {name}; "
                            f"use --group-size {fallback}")
    return requested, False


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str):
        watch = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                watch.timings[stage] = watch.timings.get(stage, 0.0) + time.perf_counter() - self.t0

        return _Stage()


def quantize_model(model: str, config: QuantConfig, output_dir: str | Path, overwrite: bool = False,
                   progress=None, device: str = "auto", offload_activations: bool | None = None,
                   warn=None, notes: dict | None = None) -> QuantResult:
    """`notes`: extra JSON-ready entries for qfid_quant.json (the sweep records why layers
    were kept: their sensitivity ranks and KL)."""
    run = _Run(model, config, Path(output_dir), overwrite, progress, device, offload_activations,
               warn or (lambda message: print(f"warning: {message}", file=sys.stderr)))
    run.notes = dict(notes or {})
    return run.execute()


@dataclass
class _Streams:
    """Activations flowing from block to block: the fp calibration stream a scheme needs
    (None for RTN / dynamic FP8), and the fp and quantized drift streams."""

    calib: list[BlockBatch] | None
    drift_fp: list[BlockBatch]
    drift_q: list[BlockBatch]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything to save for a resume. The fp drift stream may be the first calibration
        batch itself (`_drift_leads_calibration`); safetensors refuses shared storage, so
        that one is saved as a copy."""
        calib = {b.hidden.data_ptr() for b in self.calib or []}
        out = {f"drift_fp.{k}": b.hidden.clone() if b.hidden.data_ptr() in calib else b.hidden
               for k, b in enumerate(self.drift_fp)}
        out.update({f"drift_q.{k}": b.hidden for k, b in enumerate(self.drift_q)})
        out.update({f"calib.{k}": b.hidden for k, b in enumerate(self.calib or [])})
        return out

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for label in ("calib", "drift_fp", "drift_q"):
            for k, batch in enumerate(getattr(self, label) or []):
                batch.hidden = saved[f"{label}.{k}"].to(batch.hidden.device)


class _Run:
    """One `qfid quantize` invocation, stage by stage (each method one stage)."""

    def __init__(self, model: str, config: QuantConfig, output_dir: Path, overwrite: bool, progress, device: str,
                 offload: bool | None, warn):
        self.model_arg, self.config, self.output_dir, self.overwrite = model, config, output_dir, overwrite
        self.progress, self.warn = progress, warn
        self.handler = SCHEMES[config.scheme]
        self.device = resolve_device(device)
        self.offload = offload
        self.watch = _Stopwatch()
        self.block_seconds: list[float] = []
        self.search_timings: dict[str, float] = {}   # inside the blocks, by search stage (AWQ)
        self.fallbacks: dict[str, str] = {}
        self.notes: dict = {}

    def execute(self) -> QuantResult:
        with self.watch("load"):
            self._open_source()
            self._plan()
        with self.watch("calibrate"):
            self._calibrate()
        self.partial = PartialCheckpoint(self.output_dir, self._fingerprint(), self.overwrite)
        try:
            self._write_all()
        except BaseException:
            if self.partial.state["blocks_done"] == 0:
                self.partial.abandon()   # nothing worth resuming
            raise
        return self._result()

    # -- stages ------------------------------------------------------------------------------

    def _open_source(self) -> None:
        from transformers import AutoTokenizer

        self.model_dir = resolve_model_dir(self.model_arg)
        _, self.spec = check_quantizable(self.model_dir)
        if self.spec.moe and self.config.scheme == "fp8" and self.config.fp8_activations == "static":
            raise QfidError("static FP8 activation scales are not supported for MoE models; use --activations dynamic")
        self.source = CheckpointSource(self.model_dir)
        self.shell = ModelShell(self.model_dir, self.spec, self.source, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.saved_search = self._saved_search()

    def _saved_search(self) -> dict[str, torch.Tensor] | None:
        """The AWQ search to replay (`--awq-search-from`); entries for blocks this model does
        not have fail here, a missing entry when its block comes."""
        if self.config.awq_search_from is None:
            return None
        from qfid.quant.artifact import read_awq_artifact
        from qfid.quant.awq import check_artifact_used

        artifact = read_awq_artifact(self.config.awq_search_from)
        blocks = {f"{self.spec.blocks}.{i}." for i in range(len(self.shell.blocks))}
        check_artifact_used(artifact, [k for k in artifact if any(k.startswith(b) for b in blocks)])
        return artifact

    def _plan(self) -> None:
        """Every quantized Linear (full checkpoint name -> shape) and how it is stored;
        a mapping that names a missing tensor fails here, before any work."""
        shapes = {}
        for i, block in enumerate(self.shell.blocks):
            for rel in expand_experts(self.spec.linears, block):
                name = f"{self.spec.blocks}.{i}.{rel}"
                spec = self.source.specs.get(f"{name}.weight")
                if spec is None:
                    raise QfidError(f"architecture mapping names {name} but the checkpoint has no {name}.weight")
                shapes[name] = spec.shape
        self.shapes = shapes
        is_int4 = self.handler.codec == "int4"
        self.group_size, self.group_auto = choose_group_size(shapes, self.config.group_size) if is_int4 else (None, False)
        base = self.handler.plan(self.config, self.group_size)
        self.plans: dict[str, LinearPlan] = plan_linears(shapes, base, self.config, self.spec, len(self.shell.blocks))

    def _calibrate(self) -> None:
        from qfid.quant.calib import load_calibration

        self.calib_ids, self.calib_desc = load_calibration(
            self.config.calib, self.tokenizer, self.config.calib_samples, self.config.calib_seq_len, self.config.seed)

    def _fingerprint(self) -> dict:
        files = {p.name: p.stat().st_size for p in self.source.files()}
        return {"qfid": __version__, "source": str(self.model_dir.resolve()), "files": files,
                "config": dataclasses.asdict(self.config)}

    def _write_all(self) -> None:
        tmp = self.partial.path
        self.writer = CheckpointWriter(tmp, self.source.specs, self.plans, MAX_SHARD_BYTES, resume=self.partial.resuming)
        streams = self._capture()
        self._write_outside()
        self.score_dtype = _score_dtype(self.config, self.device)
        for i in range(len(self.shell.blocks)):
            if i < self.partial.state["blocks_done"]:
                continue
            if i == self.partial.state["blocks_done"] and i > 0:
                streams.restore(self.partial.load_tensors("streams"))
            t0 = time.perf_counter()
            with self.watch("blocks"):
                self._block(i, streams)
            self.block_seconds.append(time.perf_counter() - t0)
            self._report(i + 1)
        with self.watch("drift"):
            self.ppl = self._drift(streams)
        with self.watch("save"):
            self._finish()

    def _capture(self) -> _Streams:
        """What the first block receives: the calibration windows a scheme needs (in the
        AWQ search's batch size) and the drift windows."""
        from qfid.quant.awq import DEFAULT_SEARCH_TOKENS

        first = self.shell.blocks[0]
        calib = None
        if self.handler.needs_calibration(self.config):
            batch = max(1, min(len(self.calib_ids), DEFAULT_SEARCH_TOKENS // self.calib_ids.shape[1]))
            calib = capture_block_inputs(self.shell.model, first, self.calib_ids, batch, embed=self.shell.embed)
            calib = self._place(calib)
        drift_ids = self.calib_ids[:DRIFT_SAMPLES]
        drift = capture_block_inputs(self.shell.model, first, drift_ids, DRIFT_SAMPLES, embed=self.shell.embed)
        self.activations_on = "cpu" if calib and calib[0].hidden.device.type == "cpu" else str(self.device)
        self.shell.release_embedding()
        return _Streams(calib, drift, [BlockBatch(b.hidden.clone(), b.kwargs) for b in drift])

    def _place(self, batches: list[BlockBatch]) -> list[BlockBatch]:
        """Keep the calibration stream on the device, or in CPU memory when it would not fit
        beside a block's work (`--offload-activations`; chosen from free memory if unset)."""
        if self.device.type == "cpu":
            return batches
        offload = self.offload
        if offload is None:
            free, _ = torch.cuda.mem_get_info(self.device)
            stream = sum(b.hidden.numel() for b in batches) * 4
            offload = 6 * stream > free   # in + out, and the recorded Linear inputs are a few times more
        return [BlockBatch(b.hidden.to("cpu"), b.kwargs) for b in batches] if offload else batches

    def _write_outside(self) -> None:
        """Embeddings, final norm and LM head: copied as stored, file to file (2 GB on an 8B
        with its own head: read into memory, they were a fifth of a 2-block run's system time)."""
        if self.partial.state["outside_written"]:
            return
        for name in self.shell.outside_names():
            self.writer.copy_dense(name, *self.source.byte_range(name))
        self.partial.state["outside_written"] = True
        self.partial.save()

    def _block(self, i: int, streams: _Streams) -> None:
        block = self.shell.load_block(i)
        prefix = f"{self.spec.blocks}.{i}"
        drift_in_calib = _drift_leads_calibration(streams)
        if not drift_in_calib:
            streams.drift_fp, _ = run_block(block, streams.drift_fp, {})
        job = BlockJob(block, prefix, describe_block(block, self.spec), self.spec, self.config, self.group_size,
                       streams.calib, self.score_dtype, self.saved_search)
        outcome = self.handler.quantize_block(job)
        store_kept(block, prefix, outcome.quantized, self.config)
        if drift_in_calib:
            streams.drift_fp = [BlockBatch(outcome.calib_out[0].hidden, streams.drift_fp[0].kwargs)]
        for stage, seconds in outcome.timings.items():
            self.search_timings[stage] = self.search_timings.get(stage, 0.0) + seconds
        for name, why in outcome.fallbacks.items():
            self.warn(f"{name}: {why}")
        self._write_block(block, prefix, outcome)
        _install_quantized(block, outcome)
        streams.drift_q, _ = run_block(block, streams.drift_q, {})
        streams.calib = outcome.calib_out if streams.calib is not None else None
        self.shell.release_block(i)
        del block, job
        outcome.quantized = {}   # the written tensors: nothing holds them any more
        release_freed_memory(full_collect=False)
        if outcome.artifact:
            self.partial.save_tensors(f"artifact-{i:05d}", outcome.artifact)
        self.partial.save_tensors("streams", streams.tensors())
        self.partial.block_done(i, outcome.fallbacks)

    def _write_block(self, block, prefix: str, outcome: BlockOutcome) -> None:
        for name in self.shell.block_names(int(prefix.rsplit(".", 1)[1])):
            rel = name[len(prefix) + 1:]
            linear = rel[: -len(".weight")]
            if linear in outcome.quantized:
                self.writer.write_quantized(f"{prefix}.{linear}", outcome.quantized[linear])
            else:
                self.writer.write_dense(name, block_tensor(block, rel).get())

    def _report(self, done: int) -> None:
        if self.progress is not None:
            written = self.writer.shards.bytes_written / 1e9
            label = f"blocks on {self.device} · activations on {self.activations_on} · {written:.2f} GB written"
            self.progress(label, done, len(self.shell.blocks))

    def _drift(self, streams: _Streams) -> tuple[float, float]:
        norm, head = self.shell.head_weights()
        drift_ids = self.calib_ids[:DRIFT_SAMPLES]
        ppl = []
        for stream in (streams.drift_fp, streams.drift_q):
            hidden = torch.cat([b.hidden for b in stream])
            ppl.append(perplexity_of(*next_token_nll(self.shell.final_norm(hidden, norm), drift_ids, head)))
        return ppl[0], ppl[1]

    def _finish(self) -> None:
        from qfid.quant.formats import unquantized_linears, write_meta

        self.writer.close()
        tmp = self.partial.path
        not_converted = unquantized_linears(self.shell.model, self.source.names, self.plans.keys(), self.config.ignore)
        write_side_files(tmp, self.model_dir, self.tokenizer, quantization_config(self.plans, not_converted))
        self.fallbacks = dict(self.partial.state["notes"])
        artifact = {}
        for i in range(len(self.shell.blocks)):
            artifact.update(self.partial.load_tensors(f"artifact-{i:05d}"))
        write_meta(tmp, self.config, self._metadata(artifact))
        self.partial.finish()

    def _metadata(self, artifact: dict) -> dict:
        import transformers

        config = self.config
        return {
            "qfid_version": __version__,
            "source_model": str(self.model_arg),
            "scheme": config.scheme,
            "format": config.format,
            "group_size": self.group_size,
            "group_size_auto": self.group_auto,
            "fp8_weights": config.fp8_weights if config.scheme == "fp8" else None,
            "fp8_activations": config.fp8_activations if config.scheme == "fp8" else None,
            "awq": {"grid": config.awq_grid, "clip": config.awq_clip, "search_from": config.awq_search_from}
            if config.scheme == "awq-int4" else None,
            "calibration": {"source": config.calib or "builtin", "description": self.calib_desc,
                            "samples": config.calib_samples, "seq_len": config.calib_seq_len, "seed": config.seed},
            "device": str(self.device),
            "fallbacks": self.fallbacks,
            "timings_s": {k: round(v, 3) for k, v in self.watch.timings.items()},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()},
            "artifact": artifact,
            **self.notes,
        }

    def _result(self) -> QuantResult:
        result = QuantResult(
            source=str(self.model_arg), output_dir=self.output_dir, config=self.config, group_size=self.group_size,
            group_size_auto=self.group_auto, layers_quantized=len(self.plans),
            linear_bytes_fp16=sum(2 * s[0] * s[1] for s in self.shapes.values()),
            linear_bytes_quantized=self.writer.quantized_bytes, checkpoint_bytes=dir_bytes(self.output_dir),
            ppl_before=self.ppl[0], ppl_after=self.ppl[1], calib_description=self.calib_desc,
            device=str(self.device), activations_on=self.activations_on, fallbacks=self.fallbacks,
            timings=self.watch.timings)
        record_summary(result, self.block_seconds, self.search_timings)
        return result


def _score_dtype(config: QuantConfig, device: torch.device) -> torch.dtype:
    """What AWQ compares scale candidates in: bf16 where the device computes it natively."""
    from qfid.quant.awq_block import scoring_dtype

    if device.type == "cuda":
        return torch.bfloat16
    return scoring_dtype()


def _drift_leads_calibration(streams: _Streams) -> bool:
    """Whether the drift sequences are the first calibration batch, bit for bit (the drift
    samples are the first calibration samples and the batch sizes agree, as by default):
    the fp block's output for them then comes out of the scheme's calibration pass
    (`BlockOutcome.calib_out`, the fp outputs), and a pass of its own would only repeat it."""
    if streams.calib is None or len(streams.drift_fp) != 1:
        return False
    calib, drift = streams.calib[0].hidden, streams.drift_fp[0].hidden
    return calib.shape == drift.shape and calib.device == drift.device and torch.equal(calib, drift)


def _install_quantized(block, outcome: BlockOutcome) -> None:
    """Put the quantized layers into the block as the torch reference kernel computes them,
    for the drift pass: INT4 weights dequantized from their stored form (fp16 scales) in
    place of the fp weights; FP8 weights likewise, with the activations rounded through
    E4M3 on the way in (a pre-hook: per token, or the static scale; qfid's CPU op where it
    runs, bit for bit the torch chain and 0.8 s less of the default model's run), i.e.
    `kernels.reference.fp8_linear` with its weight dequantized once instead of per call;
    FP8 experts, which transformers 5 fuses, dequantized in place as qfid.load does. Dense
    fp32 matmuls keep the drift pass fast: no quantized kernel suits thousands of fp32
    rows (at 2,048 rows qfid's FP8 CPU GEMM took up to 1.35x as long as dequantize +
    F.linear: 68 vs 50 ms for the default model's down projection)."""
    from qfid.kernels.dispatch import fp8_round_activations
    from qfid.layouts.packing import as_stored
    from qfid.layouts.primitives import Int4Weight, int4_dequantize_into
    from qfid.models.linears import block_weight

    for rel, weight in outcome.quantized.items():
        ref = block_weight(block, rel)
        if isinstance(weight, Int4Weight) and ref.get().device.type == "cpu":
            int4_dequantize_into(as_stored(weight), ref.get())
            continue
        stored = as_stored(weight) if isinstance(weight, Int4Weight) else weight
        ref.set(stored.dequantize(torch.float32))
        if not isinstance(weight, Int4Weight) and ref.expert is None:
            def round_input(_module, args, scale=weight.input_scale):
                return (fp8_round_activations(args[0], scale), *args[1:])
            ref.module.register_forward_pre_hook(round_input)


def record_summary(result: QuantResult, block_seconds: list[float] | None = None,
                   search_timings: dict[str, float] | None = None) -> None:
    """Add the end-of-run figures to `qfid_quant.json`: the machine-readable twin of the
    table the CLI prints."""
    import json

    path = result.output_dir / "qfid_quant.json"
    meta = json.loads(path.read_text())
    meta["summary"] = {
        "layers_quantized": result.layers_quantized,
        "linear_bytes_fp16": result.linear_bytes_fp16,
        "linear_bytes_quantized": result.linear_bytes_quantized,
        "linear_ratio_vs_fp16": round(result.linear_ratio, 4),
        "checkpoint_bytes": result.checkpoint_bytes,
        "ppl_calib_before": result.ppl_before,
        "ppl_calib_after": result.ppl_after,
        "device": result.device,
        "activations_on": result.activations_on,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "per_block_s": [round(s, 3) for s in block_seconds or []],
        "search_s": {k: round(v, 3) for k, v in (search_timings or {}).items()},
    }
    atomic_write_text(path, json.dumps(meta, indent=2))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
