"""A running request's text is decoded as it grows (`OutputText`), not from scratch every
step: it must always be what decoding the whole output gives, less at most the replacement
characters of a character whose bytes have not all arrived."""
import random

import pytest

from qfid.engine.detokenizer import Detokenizer
from qfid.testing.tiny import build_tokenizer

MULTILINGUAL = "Le bail prend fin le 31 décembre. 租赁合同于十二月结束。 Ünïcödé 🚀🙂 ok <|im_end|> done"


@pytest.fixture(scope="module")
def detokenizer():
    return Detokenizer(build_tokenizer())


def _assert_matches(grown: str, full: str) -> None:
    assert full.startswith(grown) and set(full[len(grown):]) <= {"\ufffd"}, (grown[-12:], full[-12:])


def _assert_tracks_full_decode(detokenizer, ids):
    text = detokenizer.output_text()
    for k in range(len(ids) + 1):
        _assert_matches(text.update(ids[:k]), detokenizer.text(ids[:k]))
    return text


def test_output_text_equals_full_decode_token_by_token(detokenizer):
    ids = detokenizer.tokenizer(MULTILINGUAL, add_special_tokens=False).input_ids
    text = _assert_tracks_full_decode(detokenizer, ids)
    assert text.update(ids) == detokenizer.text(ids)   # complete characters: equal, special token skipped


@pytest.mark.parametrize("seed", range(20))
def test_output_text_on_random_ids(detokenizer, seed):
    """Random byte-level ids: split and invalid UTF-8 sequences, special tokens."""
    rng = random.Random(seed)
    _assert_tracks_full_decode(detokenizer, [rng.randrange(detokenizer.tokenizer.vocab_size) for _ in range(60)])


def test_output_text_grows_by_several_tokens_and_restarts(detokenizer):
    """Verified drafts add several tokens in one step; ids that are not the old ones plus
    new ones (never produced by the engine) are decoded from scratch."""
    ids = detokenizer.tokenizer(MULTILINGUAL, add_special_tokens=False).input_ids
    text = detokenizer.output_text()
    for k in range(0, len(ids) + 1, 5):
        text.update(ids[:k])
    assert text.update(ids) == detokenizer.text(ids)
    other = ids[:10] + ids[20:40]
    _assert_matches(text.update(other), detokenizer.text(other))
    assert text.update(ids[:3]) == detokenizer.text(ids[:3])
    text.update(ids[:20])
    swapped = ids[:19] + [ids[25]]   # same length, another last token
    assert text.update(swapped) == detokenizer.text(swapped)


def test_output_text_decodes_whole_where_cleanup_would_differ():
    """A tokenizer that cleans up tokenization spaces after decoding: the incremental
    decoder would not match transformers' `decode`, so every update decodes the whole list."""
    tokenizer = build_tokenizer()
    tokenizer.clean_up_tokenization_spaces = True
    detokenizer = Detokenizer(tokenizer)
    ids = tokenizer("a , b . c", add_special_tokens=False).input_ids
    text = detokenizer.output_text()
    assert text.backend is None
    assert [text.update(ids[:k]) for k in range(len(ids) + 1)] == [detokenizer.text(ids[:k]) for k in range(len(ids) + 1)]


def test_output_text_decodes_only_the_new_tokens(detokenizer, monkeypatch):
    """With a fast tokenizer a growing output never goes back through the whole-list decode
    (that was O(n) per step, O(n^2) per request)."""
    ids = detokenizer.tokenizer(MULTILINGUAL, add_special_tokens=False).input_ids
    full = detokenizer.text(ids)
    text = detokenizer.output_text()
    monkeypatch.setattr(detokenizer, "text", lambda _ids: pytest.fail("decoded the whole list"))
    grown = [text.update(ids[:k]) for k in range(len(ids) + 1)]
    assert grown[-1] == full
