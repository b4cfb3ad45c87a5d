"""Prometheus text exposition for /metrics: queue depth, running sequences, KV-cache use,
token counters and recent throughput. Read from the server thread without locks: each
value is a single attribute or length read, and a metric a step stale is fine."""
from __future__ import annotations


def render_metrics(async_engine, model_name: str) -> str:
    engine = async_engine.engine
    scheduler, blocks, stats = engine.scheduler, engine.block_manager, async_engine.stats
    label = f'{{model="{model_name}"}}'
    gauges = {
        "qfid_requests_waiting": ("requests queued for the engine", len(scheduler.waiting)),
        "qfid_requests_running": ("sequences in the running batch", len(scheduler.running)),
        "qfid_requests_in_flight": ("requests admitted by the server and not finished", async_engine.num_pending),
        "qfid_kv_cache_blocks_used": ("KV-cache blocks held by sequences", blocks.num_used_blocks),
        "qfid_kv_cache_blocks_total": ("KV-cache blocks allocated", blocks.num_blocks),
        "qfid_kv_cache_usage_ratio": ("fraction of KV-cache blocks in use", blocks.num_used_blocks / blocks.num_blocks),
        "qfid_generation_tokens_per_second": ("output tokens per second over the last 10 s", stats.tokens_per_second()),
        "qfid_spec_decode_acceptance_rate": ("accepted / drafted speculative tokens", scheduler.spec_stats.acceptance_rate),
        "qfid_spec_decode_tokens_per_step": ("tokens emitted per speculative verify step", scheduler.spec_stats.tokens_per_step),
    }
    counters = {
        "qfid_generation_tokens_total": ("output tokens generated", stats.generation_tokens),
        "qfid_prompt_tokens_total": ("prompt tokens of finished requests", stats.prompt_tokens),
        "qfid_requests_finished_total": ("requests finished", stats.requests_finished),
        "qfid_requests_rejected_total": ("requests refused because the queue was full", async_engine.num_rejected),
        "qfid_preemptions_total": ("sequences preempted for KV-cache space", scheduler.num_preemptions),
        "qfid_prefix_cache_hits_total": ("requests that reused cached prefix blocks", blocks.prefix_hits),
        "qfid_engine_steps_total": ("engine steps run", stats.steps),
        "qfid_spec_decode_draft_tokens_total": ("speculative tokens drafted", scheduler.spec_stats.drafted),
        "qfid_spec_decode_accepted_tokens_total": ("speculative tokens accepted", scheduler.spec_stats.accepted),
    }
    lines = []
    for kind, metrics in (("gauge", gauges), ("counter", counters)):
        for name, (help_text, value) in metrics.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{label} {value}"]
    return "\n".join(lines) + "\n"
