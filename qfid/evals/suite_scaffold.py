"""`qfid suites new`: a starter suite folder (suite.yaml with comments + flat-row items.jsonl)
that passes `qfid suites check` as written, so a user edits a working suite instead of
writing one from the schema.
"""
from __future__ import annotations

import json
from pathlib import Path

from qfid.errors import QfidError

SCORERS = ("choice", "numeric", "exact", "regex")

_HEADER = """\
# A qfid eval suite.  Check it:  qfid suites check {folder}/suite.yaml
#                     Run it:    qfid eval MODEL --suite {folder}/suite.yaml --name base
name: {name}
version: 1
description: >
  What this suite measures, in a sentence or two (shown by qfid suites show).

# items: a .jsonl, .csv or .parquet file next to this one, or datasets:NAME[:CONFIG]:SPLIT
# (a local datasets folder, or the Hugging Face hub when this machine has internet).
# One row per item. Reserved columns: id, category, lang, answer, choices, label, difficulty;
# every other column is a prompt field. A row without an id gets a stable generated one.
# In CSV, choices is a JSON list in one cell or numbered columns choice_1, choice_2, ...
items: items.jsonl

# Columns named differently in your data? Map them:   columns: {{answer: gold, id: uid}}
# lm-eval's doc_to_text / doc_to_target / doc_to_choice are accepted too.

# Prompts: {{field}} placeholders, or Jinja ({{{{ question }}}}, {{% for c in choices %}}).
# plain is what a base model sees; chat is the user turn under the model's chat template (--chat).
"""

_BODY = {
    "choice": """\
prompt:
  plain: "Question: {question}\\nAnswer:"
  chat: |-
    {{ question }}
    {% for choice in choices %}{{ "ABCDEFGHIJ"[loop.index0] }}. {{ choice }}
    {% endfor %}Answer with the correct option.

# Each choice is scored by its log-likelihood after the prompt; label is the 0-based index of the right one.
scorer:
  type: choice
  target: text
""",
    "numeric": """\
prompt:
  plain: "Question: {question}\\nAnswer:"
  chat: "{question}\\nFinish with a line 'Answer: <number>'."

# The first number after the last 'Answer:' (or in the output) must be within rel_tol of the answer.
scorer:
  type: numeric
  rel_tol: 0.005
  markers: ["Answer:"]
generation:
  max_tokens: 32
  stop: ["\\n\\n"]
""",
    "exact": """\
prompt:
  plain: "Question: {question}\\nAnswer:"
  chat: "{question}\\nGive only the answer."

# Equal to the answer after normalising case, punctuation and articles.
scorer:
  type: exact
generation:
  max_tokens: 16
  stop: ["\\n"]
""",
    "regex": """\
prompt:
  plain: "Question: {question}\\nFinish with 'Final: <answer>'.\\n"
  chat: "{question}\\nFinish with 'Final: <answer>'."

# The pattern's first group is the extracted answer, compared like exact.
scorer:
  type: regex
  pattern: "Final:\\\\s*(.+)"
generation:
  max_tokens: 48
  stop: ["\\n\\n"]
""",
}

_ROWS = {
    "choice": [
        {"id": "c-001", "category": "termination", "lang": "en", "question": "Either party may terminate on 30 days' written notice. May the Supplier terminate by email with 30 days' notice?", "choices": ["yes", "no"], "label": 0},
        {"id": "c-002", "category": "payment", "lang": "en", "question": "Invoices are payable within 45 days of receipt. An invoice arrives on 1 March. Which is the last day to pay?", "choices": ["31 March", "15 April", "16 April"], "label": 1},
        {"id": "c-003", "category": "payment", "lang": "en", "question": "Late payments bear interest of 2% per month. Is interest due on a payment made on time?", "choices": ["yes", "no"], "label": 1},
    ],
    "numeric": [
        {"id": "n-001", "category": "interest", "lang": "en", "question": "A deposit of $1,000 earns 5% simple interest per year. How much interest after 3 years?", "answer": "150"},
        {"id": "n-002", "category": "percent", "lang": "en", "question": "Revenue rose from $80,000 to $92,000. What is the percent change?", "answer": "15"},
        {"id": "n-003", "category": "percent", "lang": "en", "question": "A $250 item is discounted by 20%. What is the sale price in dollars?", "answer": "200"},
    ],
}
_ROWS["exact"] = [
    {"id": "e-001", "category": "roles", "lang": "en", "question": "Acme Ltd (the Supplier) sells to Brix plc (the Buyer). Who is the Buyer?", "answer": "Brix plc"},
    {"id": "e-002", "category": "deadlines", "lang": "en", "question": "Notice must be given within 10 days of 3 June 2024. What is the last day?", "answer": "13 June 2024"},
    {"id": "e-003", "category": "roles", "lang": "en", "question": "Acme Ltd (the Supplier) sells to Brix plc (the Buyer). Who must deliver the goods?", "answer": "Acme Ltd"},
]
_ROWS["regex"] = [dict(row, id=row["id"].replace("e-", "r-")) for row in _ROWS["exact"]]


def scaffold_suite(folder: Path, scorer: str) -> list[Path]:
    """Write FOLDER/suite.yaml and FOLDER/items.jsonl; refuses to overwrite either."""
    if scorer not in SCORERS:
        raise QfidError(f"--scorer {scorer!r} is not one of {', '.join(SCORERS)} (a perplexity suite is `text: FILE` in any suite.yaml)")
    targets = [folder / "suite.yaml", folder / "items.jsonl"]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise QfidError(f"{', '.join(existing)} already exists; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    targets[0].write_text(_HEADER.format(folder=folder, name=folder.resolve().name) + _BODY[scorer], encoding="utf-8")
    targets[1].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in _ROWS[scorer]), encoding="utf-8")
    return targets
