"""Calibration loading: every source becomes the same kind of token windows, deterministically,
and bad input fails with one line that says what is wrong."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from qfid.errors import QfidError
from qfid.quant.calib import load_calibration, token_windows, tokenize_stream
from qfid.testing.tiny import build_tokenizer

TEXT = "The tenant shall pay rent monthly. Der Vertrag endet am 31. Dezember. 1 2 3 4 5 6 7 8 9 10. " * 40


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _all_windows(texts, tokenizer, seq_len):
    return token_windows(tokenize_stream(texts, tokenizer), seq_len)


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    return sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))


def test_builtin_corpus_is_deterministic_per_seed(tokenizer):
    ids, description = load_calibration(None, tokenizer, 16, 512, seed=0)
    again, _ = load_calibration(None, tokenizer, 16, 512, seed=0)
    other, _ = load_calibration(None, tokenizer, 16, 512, seed=1)
    assert ids.shape == (16, 512) and ids.dtype == torch.long
    assert torch.equal(ids, again) and not torch.equal(ids, other)
    assert "built-in" in description


def test_txt_file_windows_come_from_its_text(tmp_path, tokenizer):
    path = tmp_path / "domain.txt"
    path.write_text(TEXT, encoding="utf-8")
    expected = _all_windows([TEXT], tokenizer, 32)
    ids, description = load_calibration(str(path), tokenizer, len(expected), 32, seed=3)
    assert _same_rows(ids, expected)
    assert str(path) in description


@pytest.mark.parametrize("rows, texts", [
    ([{"text": "alpha beta gamma delta"}] * 20, ["alpha beta gamma delta"] * 20),
    ([{"prompt": "Q: what is 2+2?", "completion": "4"}] * 20, ["Q: what is 2+2?\n4"] * 20),
    ([{"prompt": "Q: rent? ", "completion": "monthly"}] * 20, ["Q: rent? monthly"] * 20),
])
def test_jsonl_text_and_prompt_completion(tmp_path, tokenizer, rows, texts):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    expected = _all_windows(texts, tokenizer, 16)
    ids, _ = load_calibration(str(path), tokenizer, len(expected), 16, seed=0)
    assert _same_rows(ids, expected)


def test_records_are_shuffled_by_seed(tmp_path, tokenizer):
    """All windows are drawn, so only the order of the records can make two seeds differ."""
    records = [f"record {i} ends." for i in range(40)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": r}) for r in records), encoding="utf-8")
    n = len(_all_windows(records, tokenizer, 8))
    first, _ = load_calibration(str(path), tokenizer, n, 8, seed=0)
    again, _ = load_calibration(str(path), tokenizer, n, 8, seed=0)
    other, _ = load_calibration(str(path), tokenizer, n, 8, seed=1)
    assert torch.equal(first, again)
    assert not _same_rows(first, other)


def test_jsonl_chat_messages_use_the_chat_template(tmp_path, tokenizer):
    messages = [{"role": "user", "content": "How much is the rent?"}, {"role": "assistant", "content": "900 EUR."}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"messages": messages}) for _ in range(20)), encoding="utf-8")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "<|im_start|>" in rendered
    expected = _all_windows([rendered] * 20, tokenizer, 16)
    ids, _ = load_calibration(str(path), tokenizer, len(expected), 16, seed=0)
    assert _same_rows(ids, expected)
    assert (ids == tokenizer.convert_tokens_to_ids("<|im_start|>")).any()


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "  \n", "is empty"),
    ("bad.jsonl", '{"text": "fine"}\n{not json}\n', r"bad.jsonl:2: not valid JSON"),
    ("list.jsonl", '["a", "b"]\n', "expected a JSON object"),
    ("keys.jsonl", '{"body": "x"}\n', "needs 'text'"),
    ("chat.jsonl", '{"messages": [{"role": "user"}]}\n', "'role' and a string 'content'"),
    ("data.csv", "a,b\n", "must be .txt or .jsonl"),
])
def test_bad_files_fail_with_one_line(tmp_path, tokenizer, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(QfidError, match=message) as info:
        load_calibration(str(path), tokenizer, 1, 8, seed=0)
    assert "\n" not in str(info.value)


def test_missing_file(tokenizer):
    with pytest.raises(QfidError, match="not found"):
        load_calibration("/nonexistent/calib.jsonl", tokenizer, 1, 8, seed=0)


def test_too_little_text_says_found_and_needed(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("just a few words here", encoding="utf-8")
    found = len(tokenize_stream(["just a few words here"], tokenizer))
    with pytest.raises(QfidError, match=f"has {found} tokens; 4 x 64 = 256 are needed"):
        load_calibration(str(path), tokenizer, 4, 64, seed=0)


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_datasets_source_passes_name_config_split(monkeypatch, tokenizer):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": TEXT}, {"text": ""}, {"prompt": "a", "completion": "b"}])

    _fake_datasets(monkeypatch, load_dataset)
    ids, description = load_calibration("datasets:wikitext:wikitext-2-raw-v1:validation", tokenizer, 2, 32, seed=0)
    assert calls == [("wikitext", "wikitext-2-raw-v1", "validation", True)]
    assert ids.shape == (2, 32) and description.startswith("datasets:wikitext")
    load_calibration("datasets:wikitext", tokenizer, 2, 32, seed=0)
    assert calls[-1] == ("wikitext", None, "train", True)


def test_datasets_offline_is_one_clean_line(monkeypatch, tokenizer):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nmore detail")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(QfidError, match="could not load calibration dataset 'wikitext': ConnectionError") as info:
        load_calibration("datasets:wikitext", tokenizer, 2, 32, seed=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("source", ["datasets:", "datasets:a:b:c:d"])
def test_malformed_dataset_spec(tokenizer, source):
    with pytest.raises(QfidError, match=r"datasets:NAME\[:CONFIG\]\[:SPLIT\]"):
        load_calibration(source, tokenizer, 1, 8, seed=0)


def test_builtin_large_adds_its_folder_to_the_default_corpus(tokenizer):
    """`builtin-large` holds every default document and more, so it can supply sample counts
    the default corpus cannot."""
    from qfid.quant.calib import builtin_documents

    default, large = builtin_documents(), builtin_documents(large=True)
    assert set(default) < set(large) and len(large) > 3 * len(default)
    ids, description = load_calibration("builtin-large", tokenizer, 256, 512, seed=0)   # tiny tokenizer: ~6x more windows
    assert ids.shape == (256, 512) and description.startswith("built-in large mixed corpus")
    with pytest.raises(QfidError, match="are needed"):
        load_calibration(None, tokenizer, 256, 512, seed=0)
