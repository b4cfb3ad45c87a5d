"""Turn a suite item into what a model sees: a plain prompt (few-shot blocks, then the
item), chat messages, and for multiple choice the continuations to score.

Continuations start with one space (lm-eval's `target_delimiter`), so an exported suite
scores the same strings under lm-eval as under qfid.
"""
from __future__ import annotations

import string
from typing import TYPE_CHECKING

from qfid.evals.items import Item
from qfid.evals.templates import render

if TYPE_CHECKING:  # suite.py checks every item through this module at load time
    from qfid.evals.suite import Suite

TARGET_DELIMITER = " "
FEWSHOT_SEPARATOR = "\n\n"
LETTERS = string.ascii_uppercase


def item_fields(item: Item) -> dict:
    """The item's fields plus the computed ones templates may use: `choices_block` (lettered
    lines) and, for Jinja loops, `choices` itself."""
    fields = dict(item.fields)
    if item.choices:
        fields["choices_block"] = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices))
        fields["choices"] = list(item.choices)
    return fields


def render_plain(suite: Suite, item: Item) -> str:
    template = suite.prompt.plain
    shots = [render(template, shot.fields, "prompt.plain") + TARGET_DELIMITER + shot.target for shot in suite.fewshot]
    return FEWSHOT_SEPARATOR.join([*shots, render(template, item_fields(item), "prompt.plain")])


def render_chat(suite: Suite, item: Item) -> list[dict]:
    """System turn, few-shot as user/assistant pairs, then the item as the last user turn."""
    template, where = suite.prompt.chat_template, "prompt.chat" if suite.prompt.chat else "prompt.plain"
    messages = [{"role": "system", "content": suite.prompt.system}] if suite.prompt.system else []
    for shot in suite.fewshot:
        messages.append({"role": "user", "content": render(template, shot.fields, where)})
        messages.append({"role": "assistant", "content": shot.target})
    messages.append({"role": "user", "content": render(template, item_fields(item), where)})
    return messages


def choice_targets(suite: Suite, item: Item) -> list[str]:
    """What each choice is scored as: its text, or its letter when the prompt lists them."""
    if suite.scorer.target == "letter":
        return [LETTERS[i] for i in range(len(item.choices))]
    return list(item.choices)


def choice_continuations(suite: Suite, item: Item) -> list[str]:
    return [TARGET_DELIMITER + target for target in choice_targets(suite, item)]


def gold_target(suite: Suite, item: Item) -> str:
    """The reference text: the gold choice (or its letter) for multiple choice, else the answer."""
    if item.choices is not None and suite.scorer.type == "choice":
        return choice_targets(suite, item)[item.label]
    return "" if item.answer is None else str(item.answer)
