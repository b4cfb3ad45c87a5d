"""Perplexity items from a plain text file: one item per blank-line-separated paragraph.

Users can point a perplexity suite at any text they care about without converting it to
JSONL; ids are positional (`<suite>-0007`), so keep the file append-only between runs.
"""
from __future__ import annotations

from pathlib import Path

from qfid.errors import QfidError
from qfid.evals.items import Item


def paragraph_items(path: Path, suite_name: str, lang: str) -> list[Item]:
    if not path.is_file():
        raise QfidError(f"text file not found: {path}")
    paragraphs = [" ".join(block.split()) for block in path.read_text(encoding="utf-8").split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise QfidError(f"{path}: no text")
    return [
        Item(id=f"{suite_name}-{index:04d}", category="text", lang=lang, fields={"text": text}, answer=None)
        for index, text in enumerate(paragraphs, start=1)
    ]
