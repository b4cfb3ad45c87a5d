"""Issue #11's GPU check, one short script for a lent GPU machine (at most ~4 minutes):

1. write an 8-layer random checkpoint of Llama-3-8B's shapes on the machine's disk;
2. `qfid quantize --scheme awq-int4 --device cuda` on it: wall time, seconds per block, peak
   GPU memory (targets: <= 90 s for the 8 layers, <= 12 GB);
3. one block on the GPU against the same block on the CPU, fp32, same inputs: relative error
   of the outputs (target <= 1e-3).

Writes $OUT/quantize-gpu.json (or --out). Imports nothing the GPU machine lacks (no gguf,
datasets or compressed-tensors): calibration is the built-in corpus.

    python bench/quantize_gpu_check.py --work /tmp/q8 --out "$OUT/quantize-gpu.json"
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def _write_model(work: Path, layers: int) -> Path:
    from qfid.testing.synthetic import write_synthetic_llama

    model = work / f"llama8b-{layers}l"
    if not (model / "config.json").is_file():
        write_synthetic_llama(model, layers=layers)
    return model


def _quantize(model: Path, work: Path) -> dict:
    from qfid.config import QuantConfig
    from qfid.quant.pipeline import quantize_model

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = quantize_model(str(model), QuantConfig(scheme="awq-int4"), work / "awq", overwrite=True, device="cuda")
    wall = time.perf_counter() - t0
    meta = json.loads((work / "awq" / "qfid_quant.json").read_text())["summary"]
    return {"wall_s": round(wall, 2), "per_block_s": meta["per_block_s"], "search_s": meta["search_s"],
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "activations_on": result.activations_on, "ppl_before": result.ppl_before, "ppl_after": result.ppl_after,
            "targets": {"wall_le_90s": wall <= 90, "peak_gpu_le_12gb": torch.cuda.max_memory_allocated() <= 12e9}}


def _block_gpu_vs_cpu(model: Path) -> dict:
    """Block 0 on both devices on the same captured inputs, fp32."""
    from qfid.models.checkpoint_source import CheckpointSource
    from qfid.models.loading import check_quantizable
    from qfid.models.streaming import ModelShell
    from qfid.quant.block_capture import capture_block_inputs, run_block

    _, spec = check_quantizable(model)
    source = CheckpointSource(model)
    ids = torch.randint(0, 500, (2, 256), generator=torch.Generator().manual_seed(0))
    outputs = {}
    for device in ("cpu", "cuda"):
        shell = ModelShell(model, spec, source, torch.device(device))
        batches = capture_block_inputs(shell.model, shell.blocks[0], ids, 2, embed=shell.embed)
        block = shell.load_block(0)
        with _no_tf32():
            outputs[device] = run_block(block, batches, {})[0][0].hidden.float().cpu()
        shell.release_block(0)
    err = ((outputs["cuda"] - outputs["cpu"]).norm() / outputs["cpu"].norm()).item()
    return {"relative_error": err, "target_le_1e-3": err <= 1e-3}


class _no_tf32:
    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qfid-gpu-quantize"))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "quantize-gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this check runs on a lent GPU machine")
    args.work.mkdir(parents=True, exist_ok=True)
    model = _write_model(args.work, args.layers)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
              "block_gpu_vs_cpu": _block_gpu_vs_cpu(model), "awq": _quantize(model, args.work)}
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
