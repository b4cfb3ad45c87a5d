"""The HF transformers engines of `qfid bench`: static batching (left-padded `generate`
over batches of --hf-batch) and HF's own continuous batching (`init_continuous_batching`).
Each runner returns (replay, finish) like the qfid runner in harness.py."""
from __future__ import annotations

import time
from collections import deque

from qfid.bench.trace import BenchSpec, Trace, sleep_until
from qfid.bench.workload import BenchRequest
from qfid.errors import QfidError


def _load_hf(spec: BenchSpec):
    from qfid.engine.loader import load_model_and_tokenizer
    from qfid.models.placement import resolve_device

    model, tokenizer, _ = load_model_and_tokenizer(spec.model_dir, spec.dtype, resolve_device(spec.device))
    return model, tokenizer


class _StepClock:
    """A `generate` streamer that only timestamps each decoding step (the first `put` is
    the prompt), so static batching reports when each token existed, not when the batch
    returned: the kindest reading of its latency."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def hf_static_runner(spec: BenchSpec):
    model, tokenizer = _load_hf(spec)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    _generate_static(model, pad_id, [BenchRequest(0.0, (1, 2, 3, 4), 2)])  # warm-up
    return (lambda workload: _replay_static(model, pad_id, workload, spec.hf_batch)), dict


def _replay_static(model, pad_id: int, workload: list[BenchRequest], batch_size: int) -> list[Trace]:
    """When the previous batch is done, take up to `batch_size` requests that have arrived
    (waiting for the next one if none has) and run them to the batch's longest output."""
    start = time.perf_counter()
    traces = [Trace(start + r.arrival_s) for r in workload]
    pending = deque(sorted(range(len(workload)), key=lambda i: workload[i].arrival_s))
    while pending:
        sleep_until(traces[pending[0]].arrival)
        now = time.perf_counter()
        batch = []
        while pending and len(batch) < batch_size and traces[pending[0]].arrival <= now:
            batch.append(pending.popleft())
        tokens, times = _generate_static(model, pad_id, [workload[i] for i in batch])
        for i, row in zip(batch, tokens):
            length = workload[i].output_len
            traces[i].token_ids, traces[i].first_token, traces[i].finish = row[:length], times[0], times[length - 1]
    return traces


def _generate_static(model, pad_id: int, requests: list[BenchRequest]) -> tuple[list[list[int]], list[float]]:
    """Left-padded greedy `generate`; min_new_tokens = max_new_tokens keeps EOS from ending
    any row early. Returns each row's new tokens and the time of each step."""
    import torch

    width = max(len(r.prompt_ids) for r in requests)
    ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests], device=model.device)
    mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests],
                        device=model.device)
    steps = max(r.output_len for r in requests)
    clock = _StepClock()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, pad_token_id=pad_id, streamer=clock)
    return out[:, width:].tolist(), clock.times


def hf_cb_runner(spec: BenchSpec):
    model, _ = _load_hf(spec)
    if not hasattr(model, "init_continuous_batching"):
        raise QfidError("this transformers has no continuous batching (init_continuous_batching)")
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=-1)
    manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=_cb_config(model, spec))
    manager.start()
    try:
        _collect_cb(manager, {_add_cb(manager, "warmup", BenchRequest(0.0, (1, 2, 3, 4), 2)): Trace(0.0)})
    except BaseException:
        manager.stop(block=True)
        raise

    def finish() -> dict:
        manager.stop(block=True)
        return {}

    return (lambda workload: _replay_cb(manager, workload)), finish


def _cb_config(model, spec: BenchSpec):
    """The same KV budget and step token budget as the qfid engine. Left alone, HF sizes its
    cache from the free memory of the device -- on CPU, most of the machine's RAM, zeroed."""
    from transformers import ContinuousBatchingConfig

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * model.dtype.itemsize
    cb = ContinuousBatchingConfig(max_batch_tokens=spec.max_num_batched_tokens)
    cb.num_blocks = max(1, int(spec.kv_cache_gb * 2 ** 30) // (bytes_per_token * cb.page_size))
    return cb


def _add_cb(manager, request_id: str, request: BenchRequest) -> str:
    """EOS id -1 switches EOS off for the request, like ignore_eos."""
    manager.add_request(list(request.prompt_ids), request_id=request_id, max_new_tokens=request.output_len,
                        eos_token_id=-1, record_timestamps=True)
    return request_id


def _replay_cb(manager, workload: list[BenchRequest]) -> list[Trace]:
    """Requests go to HF's background generation thread at their arrival times; results
    carry per-token timestamps on the same perf_counter clock."""
    start = time.perf_counter()
    traces = [Trace(start + r.arrival_s) for r in workload]
    by_id = {}
    for i in sorted(range(len(workload)), key=lambda i: workload[i].arrival_s):
        sleep_until(traces[i].arrival)
        by_id[_add_cb(manager, f"bench-{i}", workload[i])] = traces[i]
    _collect_cb(manager, by_id)
    return traces


def _collect_cb(manager, traces: dict[str, Trace]) -> None:
    waiting = set(traces)
    while waiting:
        result = manager.get_result(timeout=0.5)
        if result is None:
            if not manager.is_running():
                raise QfidError("HF continuous batching stopped before finishing all requests")
            continue
        if result.is_finished() and result.request_id in waiting:
            if result.error is not None:
                raise QfidError(f"HF continuous batching failed a request: {result.error}")
            trace = traces[result.request_id]
            stamps = result.timestamps or [time.perf_counter()]
            trace.token_ids, trace.first_token, trace.finish = list(result.generated_tokens), stamps[0], stamps[-1]
            waiting.discard(result.request_id)
