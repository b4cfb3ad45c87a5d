"""The benchmark harness that `qfid bench` and the scripts in bench/ share: workloads,
engine runners (qfid's engine, HF static and continuous batching), traces and summaries.
It drives the runtime from outside; nothing in the runtime imports it."""
