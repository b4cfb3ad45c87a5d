"""The sweep's orchestration: checkpoints, sensitivity, runs, comparisons, verdict.

Everything lands under the output folder and is reused by the next call with the same
arguments: a checkpoint whose qfid_quant.json records the same QuantConfig, a complete eval
run of the same model and item limit, a sensitivity ranking of the same base checkpoint, a
measured throughput or held-out perplexity. An interrupted sweep resumes where it stopped.

    OUTPUT/checkpoints/NAME   one folder per candidate (what vLLM / transformers load)
    OUTPUT/runs/NAME          eval runs (`qfid compare` reads them as they are)
    OUTPUT/sensitivity/BASE.json, OUTPUT/measures.json, OUTPUT/calib-suite-*.jsonl
    OUTPUT/timings.json       seconds each step took when it ran (a reused step keeps its figure)
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from qfid.config import QuantConfig
from qfid.errors import QfidError
from qfid.evals.gate_config import GateConfig
from qfid.sweep.keep_search import KeepSearch, search_keep
from qfid.sweep.pareto import CONTROL_SUITES
from qfid.sweep.schemes import SUITE_CALIB, SweepScheme
from qfid.utils.fs import atomic_write_text

BASELINE = "bf16"
EVAL_DTYPE = "bfloat16"          # what a server runs: the baseline and every candidate in bf16 activations
RANKING_SAMPLES, RANKING_SEQ_LEN, RANKING_SEED = 4, 256, 1
BENCH_REQUESTS, BENCH_PROMPT, BENCH_OUTPUT = 16, (64, 128), (32, 64)


@dataclass
class SweepOptions:
    model: str
    schemes: list[SweepScheme]
    suites: list[str]
    output: Path
    report: Path
    limit: int | None = None
    calib: str | None = None
    backend: str = "engine"
    gate: GateConfig = field(default_factory=GateConfig)
    bench: bool = True
    keep_max: int = 16
    title: str | None = None
    quant_progress: Callable | None = None   # () -> context manager yielding a progress callback (the CLI's bar)


@dataclass
class Candidate:
    name: str
    scheme: SweepScheme
    path: Path
    config: QuantConfig
    kept_units: list[list[str]] = field(default_factory=list)
    notes: dict = field(default_factory=dict)   # for qfid_quant.json


@dataclass
class SweepResult:
    summary: dict
    passes: bool
    report: dict[str, Path]


def run_sweep(options: SweepOptions, console: Console | None = None) -> SweepResult:
    return _Sweep(options, console or Console()).run()


class _Sweep:
    def __init__(self, options: SweepOptions, console: Console) -> None:
        from qfid.evals.suite import load_suites

        self.o, self.console = options, console
        self.suites = load_suites(options.suites)   # a typo fails before any model work
        self.source = _source_dir(options.model)
        self.runs_dir = options.output / "runs"
        self.measures_file = options.output / "measures.json"
        self.measures = json.loads(self.measures_file.read_text()) if self.measures_file.is_file() else {}
        self.timings_file = options.output / "timings.json"
        self.timings = json.loads(self.timings_file.read_text()) if self.timings_file.is_file() else {}
        self.steps: list[str] = []   # the steps this sweep consists of, run now or reused
        self.candidates: list[Candidate] = []
        self.searches: dict[str, KeepSearch] = {}
        self.rankings: dict[str, list] = {}

    # -- the steps -----------------------------------------------------------------------

    def run(self) -> SweepResult:
        from qfid.evals.report import compare_many

        self.o.output.mkdir(parents=True, exist_ok=True)
        self._evaluate(BASELINE, self.source)
        for scheme in self.o.schemes:
            if scheme.auto:
                self._auto_keep(scheme)
            else:
                self.candidates.append(self._candidate(scheme))
                self._evaluate(scheme.folder, self.candidates[-1].path)
        comparisons = compare_many(BASELINE, [c.scheme.folder for c in self.candidates], self.runs_dir)
        for comparison, candidate in zip(comparisons, self.candidates):
            comparison.candidate["name"] = candidate.name
        return self._conclude(comparisons)

    def _conclude(self, comparisons) -> SweepResult:
        from qfid.evals.verdict import ship_verdict
        from qfid.sweep.report import build_summary, write_sweep_report

        sizes = {c.name: weights_mib(c.path) for c in self.candidates}
        verdict = ship_verdict(comparisons, sizes, self.o.gate, BASELINE)
        checkpoints = [(BASELINE, self.source)] + [(c.name, c.path) for c in self.candidates]
        measured = {name: {"output_tok_s": self.throughput(name, path), "heldout_ppl": self.heldout_ppl(name, path)}
                    for name, path in checkpoints}
        summary = build_summary(self, comparisons, sizes, verdict, measured)
        paths = write_sweep_report(self, comparisons, summary)
        return SweepResult(summary, verdict["overall"]["passes"], paths)

    # -- candidates ----------------------------------------------------------------------

    def _candidate(self, scheme: SweepScheme) -> Candidate:
        calib = self._calib(scheme)
        n = scheme.keep_n or 0
        if scheme.keep_as is None or n == 0:
            base = _base_scheme(scheme)
            candidate = Candidate(scheme.name, scheme, self._checkpoints / base.folder, base.quant_config(calib))
        else:
            ranked = self._ranking(scheme)[:n]
            units = [list(s.unit) for s in ranked]
            keep = [name for unit in units for name in unit]
            why = {"kept_units": [{"rank": i + 1, "unit": list(s.unit), "kl": s.kl} for i, s in enumerate(ranked)],
                   "sensitivity": "mean KL of the final next-token distributions with the unit alone quantized "
                                  f"({RANKING_SAMPLES} x {RANKING_SEQ_LEN} calibration tokens)"}
            candidate = Candidate(scheme.name, scheme, self._checkpoints / scheme.folder,
                                  self._keep_config(scheme, calib, keep), units, why)
        self._quantize(candidate)
        return candidate

    def _keep_config(self, scheme: SweepScheme, calib: str | None, keep: list[str]) -> QuantConfig:
        """A `+keep:N` of an AWQ base replays the base's saved search (`awq_search_from`):
        keeping layers changes their storage, not the search, so the checkpoint is bit for bit
        what a new search would write, without its cost (most of an AWQ quantization)."""
        config = scheme.quant_config(calib, keep)
        if config.scheme != "awq-int4":
            return config
        return replace(config, awq_search_from=str(self._checkpoints / _base_scheme(scheme).folder))

    @property
    def _checkpoints(self) -> Path:
        return self.o.output / "checkpoints"

    def _calib(self, scheme: SweepScheme) -> str | None:
        """The calibration source: the domain suites' split for @suite, else the sweep's own
        (a `suite:` one written out as a file the quantizer reads)."""
        from qfid.evals.calib_split import SUITE_PREFIX, is_suite_calibration, write_suite_calibration

        calib = SUITE_PREFIX + ",".join(self.domain_suites) if scheme.suite_calib else self.o.calib
        if not is_suite_calibration(calib):
            return calib
        return str(write_suite_calibration(calib, self.o.output))

    @property
    def domain_suites(self) -> list[str]:
        """The sweep's suites minus the control and perplexity suites."""
        return [s.name for s in self.suites if s.name not in CONTROL_SUITES and s.scorer.type != "perplexity"]

    def _quantize(self, candidate: Candidate) -> None:
        from qfid.quant.pipeline import quantize_model

        meta = candidate.path / "qfid_quant.json"
        self.steps.append(f"quantize {candidate.name}")
        if meta.is_file() and json.loads(meta.read_text()).get("quant_config") == asdict(candidate.config):
            self.console.print(f"[dim]{candidate.name}: reusing {candidate.path}[/dim]")
            return
        self.console.print(f"quantize {candidate.name} -> {candidate.path}")
        with self._timed(f"quantize {candidate.name}"), \
                (self.o.quant_progress() if self.o.quant_progress else nullcontext()) as progress:
            quantize_model(str(self.source), candidate.config, candidate.path, overwrite=True, progress=progress,
                           notes=candidate.notes)

    def _ranking(self, scheme: SweepScheme) -> list:
        """The base checkpoint's units, most sensitive first (measured once per base)."""
        base = _base_scheme(scheme)
        if base.folder not in self.rankings:
            from qfid.quant.calib import load_calibration
            from qfid.quant.formats import load_tokenizer
            from qfid.quant.sensitivity import load_or_measure

            base_candidate = self._candidate(base)
            ids, _ = load_calibration(base_candidate.config.calib, load_tokenizer(str(self.source)),
                                      RANKING_SAMPLES, RANKING_SEQ_LEN, RANKING_SEED)
            self.console.print(f"sensitivity of every fused unit of {base.name} ({ids.numel()} calibration tokens)")
            cache = self.o.output / "sensitivity" / f"{base.folder}.json"
            self.steps.append(f"sensitivity {base.name}")
            with self._timed(f"sensitivity {base.name}") if not cache.is_file() else nullcontext():
                self.rankings[base.folder] = load_or_measure(self.source, base_candidate.path, ids, cache)
        return self.rankings[base.folder]

    def _auto_keep(self, scheme: SweepScheme) -> None:
        """Bisection over N with the gate as the judge; the pick (and its N - 1 check) join the sweep."""
        from qfid.evals.gate import evaluate_gate
        from qfid.evals.report import compare_many

        tried: dict[int, Candidate] = {}

        def passes(n: int) -> bool:
            tried[n] = self._candidate(scheme.with_n(n))
            self._evaluate(tried[n].scheme.folder, tried[n].path)
            (comparison,) = compare_many(BASELINE, [tried[n].scheme.folder], self.runs_dir)
            ok = evaluate_gate(comparison, self.o.gate).passed
            self.console.print(f"{scheme.name}: N = {n} {'passes' if ok else 'fails'} the gate")
            return ok

        max_n = min(self.o.keep_max, len(self._ranking(scheme)))
        search = search_keep(passes, max_n)
        self.searches[scheme.name] = search
        self.console.print(f"{scheme.name}: {search.summary()}")
        for n in (search.n, None if not search.n else search.n - 1):
            if n is not None and tried[n].name not in {c.name for c in self.candidates}:
                self.candidates.append(tried[n])

    # -- measures ------------------------------------------------------------------------

    @contextmanager
    def _timed(self, step: str):
        """Record the seconds `step` takes (it ran now, so it replaces an earlier figure) in
        OUTPUT/timings.json: the report's time line sums them, so a resumed sweep still says
        what the whole sweep cost on this machine."""
        started = time.perf_counter()
        yield
        self.timings[step] = round(time.perf_counter() - started, 1)
        atomic_write_text(self.timings_file, json.dumps(self.timings, indent=2) + "\n")

    def _evaluate(self, name: str, path: Path) -> None:
        """A complete run of the same model and limit is reused; a partial one resumes; one
        with other settings is replaced."""
        from qfid.evals.backends import make_backend
        from qfid.evals.runner import RunOptions, build_manifest, evaluate_run
        from qfid.evals.store import RunStore

        store = RunStore(self.runs_dir, name)
        self.steps.append(f"eval {name}")
        if store.manifest_file.is_file():
            manifest = store.manifest()
            same = manifest["identity"].get("model") == str(path) and manifest["identity"].get("limit") == self.o.limit
            if same and manifest.get("status") == "complete":
                self.console.print(f"[dim]eval {name}: reusing {store.path}[/dim]")
                return
        options = RunOptions(model=str(path), limit=self.o.limit, seed=0, top_k=10, batch_items=16)
        backend = make_backend(self.o.backend, str(path), batch_size=8, dtype=EVAL_DTYPE)
        self.console.print(f"eval {name} on {', '.join(s.name for s in self.suites)} "
                           f"(limit {self.o.limit or 'none'}, {EVAL_DTYPE})")
        identity = build_manifest(name, backend, self.suites, options)["identity"]
        other_settings = store.manifest_file.is_file() and store.manifest().get("identity") != identity
        with self._timed(f"eval {name}"):
            evaluate_run(name, backend, self.suites, store, options, overwrite=other_settings)

    def measure(self, kind: str, name: str, path: Path, compute: Callable[[], float]) -> float:
        """A cached figure (held-out perplexity, throughput) of a checkpoint."""
        key = f"{kind}:{name}:{path}"
        self.steps.append(f"{kind} {name}")
        if key not in self.measures:
            with self._timed(f"{kind} {name}"):
                self.measures[key] = compute()
            atomic_write_text(self.measures_file, json.dumps(self.measures, indent=2) + "\n")
        return self.measures[key]

    def throughput(self, name: str, path: Path) -> float | None:
        if not self.o.bench:
            return None
        return self.measure("output_tok_s", name, path, lambda: _short_bench(path))

    def heldout_ppl(self, name: str, path: Path) -> float:
        from qfid.quant.heldout import heldout_perplexity

        return self.measure("heldout_ppl", name, path, lambda: heldout_perplexity(path))


def _base_scheme(scheme: SweepScheme) -> SweepScheme:
    name = scheme.base + (SUITE_CALIB if scheme.suite_calib else "")
    return SweepScheme(name, scheme.base, suite_calib=scheme.suite_calib)


def _source_dir(model: str) -> Path:
    from qfid.models.default import ensure_default_model, is_default_model
    from qfid.models.loading import quantization_method, read_config, resolve_model_dir

    path = ensure_default_model(model) if is_default_model(model) else resolve_model_dir(model)
    if quantization_method(read_config(path)) is not None:
        raise QfidError(f"{model} is already quantized: a sweep starts from the full-precision model")
    return path


def weights_mib(path: Path) -> float:
    """The checkpoint's weight files (what a server loads), not its tokenizer or artifacts."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20


def _short_bench(path: Path) -> float:
    """Output tokens/s of qfid's engine on a short bursty workload (a fresh process)."""
    from qfid.bench.harness import run_isolated
    from qfid.bench.trace import BenchSpec
    from qfid.bench.workload import make_workload
    from qfid.quant.formats import load_tokenizer

    workload = make_workload(load_tokenizer(str(path)), BENCH_REQUESTS, BENCH_PROMPT, BENCH_OUTPUT, seed=0)
    return run_isolated("qfid", BenchSpec(str(path), dtype=EVAL_DTYPE), workload).record["output_tokens_per_s"]
