"""qfid as an lm-eval model: `--model qfid --model_args pretrained=PATH[,backend=hf|engine|openai,...]`.

lm-eval never imports qfid, so the model exists only once this module is imported. From a
shell, run lm-eval's own CLI through it:

    python -m qfid.evals.lm_eval run --model qfid --model_args pretrained=out/smollm2-awq \\
        --include_path tasks/ --tasks qfid_finance_mc --limit 100

and from Python `import qfid.evals.lm_eval` before `lm_eval.simple_evaluate(model="qfid", ...)`.
The remaining model_args go to the backend (`dtype=float32`, `base_url=...`); lm-eval's
`--batch_size` and `--device` are passed on too. Every request is answered by the same
backend object `qfid eval` uses, so lm-eval's stock tasks score what qfid scores, including
quantized checkpoints that only qfid loads.
"""
from __future__ import annotations

import lm_eval.models  # noqa: F401  lm-eval fills its registry with its own models only while it is empty
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from qfid.errors import QfidError
from qfid.evals.backends import make_backend

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until


def _register_once(cls):
    """`@register_model("qfid")`, except for the copy `python -m` runs as `__main__`: lm-eval
    refuses a second class under one name, and the real module registers itself."""
    return cls if __name__ == "__main__" else register_model("qfid")(cls)


@_register_once
class QfidLM(LM):
    """lm-eval's three request kinds, each one call into a qfid backend."""

    def __init__(self, pretrained: str, backend: str = "hf", batch_size: int | str | None = None,
                 max_batch_size: int | None = None, device: str | None = None, **backend_options):
        super().__init__()
        options = {**backend_options, **_batch_option(batch_size, max_batch_size), **_device_option(str(backend), device)}
        self.qfid = make_backend(str(backend), str(pretrained), **options)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = self.qfid.loglikelihood([tuple(request.args) for request in requests])
        return self._answered("loglikelihood", requests, [(r.logprob, r.is_greedy) for r in results])

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = self.qfid.loglikelihood_rolling([request.args[0] for request in requests])
        return self._answered("loglikelihood_rolling", requests, [r.logprob for r in results])

    def generate_until(self, requests) -> list[str]:
        """One backend call per distinct (stop strings, length), answers back in request order."""
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(generation_settings(request.args[1]), []).append(index)
        outputs: list[str] = [""] * len(requests)
        for (stop, max_tokens), indices in groups.items():
            texts = self.qfid.generate([requests[i].args[0] for i in indices], max_tokens, list(stop))
            for index, text in zip(indices, texts, strict=True):
                outputs[index] = text
        return self._answered("generate_until", requests, outputs)

    def _answered(self, kind: str, requests, outputs: list) -> list:
        """Feed lm-eval's `--use_cache` database, as lm-eval's own models do."""
        for request, output in zip(requests, outputs, strict=True):
            self.cache_hook.add_partial(kind, request.args, output)
        return outputs


def generation_settings(gen_kwargs: dict) -> tuple[tuple[str, ...], int]:
    """(stop strings, max new tokens) from a task's generation_kwargs. qfid backends decode
    greedily only, so a task that asks for sampling is refused rather than silently changed."""
    kwargs = dict(gen_kwargs or {})
    if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
        raise QfidError(f"qfid backends decode greedily; this task asks for sampling ({kwargs})")
    until = kwargs.get("until") or []
    stop = (until,) if isinstance(until, str) else tuple(until)
    return stop, int(kwargs.get("max_gen_toks") or DEFAULT_MAX_GEN_TOKS)


def _batch_option(batch_size: int | str | None, max_batch_size: int | None) -> dict:
    """lm-eval's `--batch_size N|auto[:k]`: N as given; qfid backends have no auto-tuning, so
    `auto` means `max_batch_size` when set and the backend's default otherwise."""
    if batch_size is None:
        return {}
    text = str(batch_size)
    if text.startswith("auto"):
        return {"batch_size": int(max_batch_size)} if max_batch_size else {}
    return {"batch_size": int(text)}


def _device_option(backend: str, device: str | None) -> dict:
    """lm-eval's CLI always sends a device ("cuda:0" unless told otherwise). A served model
    takes none, and CUDA that is not there means the backend's own choice, as lm-eval's hf
    model does it."""
    if device is None or backend == "openai":
        return {}
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return {}
    return {"device": device}


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with `qfid` registered (lm-eval reads sys.argv itself)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    from qfid.evals.lm_eval import main as _main

    _main()
