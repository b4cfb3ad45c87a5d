"""lm-eval's own `local-completions` model (its OpenAI-API client, the `api` extra) against
`qfid serve` on the tiny Llama gives, item by item, the same log-likelihoods (fp32, within
1e-4) and generations as lm-eval's `hf` model on the same weights: log-likelihood,
generation and rolling tasks, local data, no hub."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lm_eval")
pytest.importorskip("aiohttp")  # lm-eval[api]

from tests.tiny.test_engine_greedy import one_thread  # noqa: E402,F401 (autouse)
from tests.tiny.test_engine_server import MODEL  # noqa: E402
from tests.tiny.test_eval_openai_served import server  # noqa: E402,F401 (fixture)
from tests.tiny.test_lm_eval_bridge import SUITES, _lm_eval, tasks_dir  # noqa: E402,F401 (fixture)

from qfid.evals.lm_eval_export import task_name  # noqa: E402
from qfid.evals.suite import load_suite  # noqa: E402

TOL = 1e-4


def test_local_completions_against_qfid_serve_equals_lm_eval_hf(server, tiny_llama_dir, tasks_dir):
    served = _lm_eval("local-completions", {"model": MODEL, "base_url": f"{server.url}/v1/completions",
                                            "tokenizer": str(tiny_llama_dir), "tokenizer_backend": "huggingface",
                                            "num_concurrent": 4, "max_retries": 1, "max_length": 1024}, tasks_dir)
    local = _lm_eval("hf", {"pretrained": str(tiny_llama_dir), "dtype": "float32", "max_length": 1024}, tasks_dir)
    choice, generation, rolling = (task_name(load_suite(name)) for name in SUITES)
    for task in (choice, rolling):
        samples, expected = served[task][1], local[task][1]
        assert samples.keys() == expected.keys() and samples
        for item_id, sample in samples.items():
            got = [resp[0][0] if isinstance(resp[0], (list, tuple)) else resp[0] for resp in sample["resps"]]
            want = [resp[0][0] if isinstance(resp[0], (list, tuple)) else resp[0] for resp in expected[item_id]["resps"]]
            assert got == pytest.approx(want, abs=TOL), (task, item_id)
    texts = {i: s["resps"][0][0] for i, s in served[generation][1].items()}
    assert texts == {i: s["resps"][0][0] for i, s in local[generation][1].items()} and texts
    assert served[choice][0]["acc,none"] == local[choice][0]["acc,none"]
