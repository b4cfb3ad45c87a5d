"""Calibration tokens: the text AWQ (and static FP8) look at to learn which channels matter.

Calibrating on the workload's own text is the known fix for domain regressions, so a user
can point `--calib` at a .txt file, a .jsonl file (`text`, `prompt` + `completion`, or chat
`messages` rendered with the tokenizer's template) or a `datasets:NAME[:CONFIG][:SPLIT]`
dataset. Without one, qfid uses its built-in mixed corpus (finance, legal, support dialogue,
code, prose; a dozen languages; 25.7k SmolLM2 tokens) shipped in `qfid/data/calib/`.
`--calib builtin-large` adds `qfid/data/calib_large/` (~155k tokens in all: more of every
genre, 18 languages), enough to draw 128 x 512 samples from about 300 windows. It is not the
default: at 16 samples it moved AWQ's held-out perplexity on the default model from 40.76 to
41.38 (its larger code and non-English share is further from English prose), and more
samples did not make results steadier (bench/results/quantize_calib_spread.json). None of
either is about the topics of the held-out perplexity text (`qfid/data/heldout/`).

Every source is a list of documents (the built-in corpus: its paragraphs; .jsonl and
datasets: their records; .txt: the whole file). The documents are shuffled by `seed` and
joined into one token stream, which is cut into `seq_len` windows; `n_samples` windows are
drawn without replacement by `seed`, so a run is reproducible. Shuffling makes each window a
mix of sources, so even the few sequences AWQ scores attention on represent the whole corpus
rather than whichever file a window happened to fall in.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from qfid.errors import QfidError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUILTIN_DIR = DATA_DIR / "calib"
LARGE_DIR = DATA_DIR / "calib_large"
BUILTIN_LARGE = "builtin-large"
DATASET_PREFIX = "datasets:"
# Characters of dataset text to read per token needed: ~4 chars per token, x4 so the windows
# drawn are a sample rather than the first rows.
DATASET_CHARS_PER_TOKEN = 16


def load_calibration(source: str | None, tokenizer, n_samples: int, seq_len: int,
                     seed: int) -> tuple[torch.LongTensor, str]:
    """`n_samples` windows of `seq_len` tokens [n_samples, seq_len] and a one-line description."""
    needed = n_samples * seq_len
    if source is None:
        docs, what = builtin_documents(), "built-in mixed corpus"
    elif source == BUILTIN_LARGE:
        docs, what = builtin_documents(large=True), "built-in large mixed corpus"
    elif source.startswith(DATASET_PREFIX):
        docs, what = _read_dataset(source[len(DATASET_PREFIX):], tokenizer, needed * DATASET_CHARS_PER_TOKEN), source
    else:
        docs, what = _read_file(Path(source), tokenizer), source
    ids = tokenize_stream([docs[i] for i in _permutation(len(docs), seed)], tokenizer)
    windows = token_windows(ids, seq_len)
    if len(windows) < n_samples:
        raise QfidError(f"calibration text {what} has {len(ids):,} tokens; {n_samples} x {seq_len} = "
                        f"{needed:,} are needed (add text or lower --calib-samples/--calib-seq-len)")
    order = _permutation(len(windows), seed)[:n_samples]
    description = f"{what}: {n_samples} x {seq_len} tokens sampled (seed {seed}) from {len(ids):,}"
    return windows[order], description


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def builtin_documents(large: bool = False) -> list[str]:
    """The built-in corpus as paragraphs (blank-line separated blocks of every file); with
    `large`, the files of both folders in one name order."""
    folders = (BUILTIN_DIR, LARGE_DIR) if large else (BUILTIN_DIR,)
    return [p.strip() for text in read_text_dir(*folders) for p in text.split("\n\n") if p.strip()]


def read_text_dir(*folders: Path) -> list[str]:
    """Every .txt file of packaged corpus folders, in name order."""
    files = sorted((f for folder in folders for f in folder.glob("*.txt")), key=lambda f: f.name)
    if not files:
        raise QfidError(f"no corpus files in {', '.join(map(str, folders))}: the qfid installation is incomplete")
    return [f.read_text(encoding="utf-8") for f in files]


def tokenize_stream(texts: list[str], tokenizer) -> torch.LongTensor:
    """One token stream: the documents joined by blank lines, no special tokens added."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_windows(ids: torch.LongTensor, seq_len: int) -> torch.LongTensor:
    """Non-overlapping windows [len(ids) // seq_len, seq_len]; the tail is dropped."""
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def _read_file(path: Path, tokenizer) -> list[str]:
    if not path.is_file():
        raise QfidError(f"calibration file not found: {path}")
    if path.suffix not in (".txt", ".jsonl"):
        raise QfidError(f"calibration file {path} must be .txt or .jsonl (or use datasets:NAME)")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise QfidError(f"calibration file {path} is empty")
    if path.suffix == ".txt":
        return [text]
    return [_render_row(_parse_line(line, path, n), tokenizer, f"{path}:{n}")
            for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_line(line: str, path: Path, n: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise QfidError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise QfidError(f"{path}:{n}: expected a JSON object per line")
    return row


def _render_row(row: dict, tokenizer, where: str) -> str:
    """A record as the text the model would see: `text`, `prompt` + `completion`, or chat
    `messages` through the tokenizer's chat template."""
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        prompt = row["prompt"]
        return prompt + ("" if prompt[-1:].isspace() else "\n") + row["completion"]
    if isinstance(row.get("messages"), list):
        return _render_chat(row["messages"], tokenizer, where)
    raise QfidError(f"{where}: a record needs 'text', 'prompt' and 'completion', or 'messages'; "
                    f"got keys {sorted(row)}")


def _render_chat(messages: list, tokenizer, where: str) -> str:
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages):
        raise QfidError(f"{where}: each message needs a 'role' and a string 'content'")
    if getattr(tokenizer, "chat_template", None) is None:
        raise QfidError(f"{where}: chat 'messages' need a tokenizer with a chat template; this one has none")
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _read_dataset(spec: str, tokenizer, max_chars: int) -> list[str]:
    """Rows of `NAME[:CONFIG][:SPLIT]` (split defaults to train), streamed until `max_chars`."""
    name, config, split = _dataset_parts(spec)
    texts, total = [], 0
    try:
        from datasets import load_dataset

        for n, row in enumerate(load_dataset(name, config, split=split, streaming=True)):
            text = _render_row(row, tokenizer, f"datasets:{name}[{n}]")
            if text.strip():
                texts.append(text)
                total += len(text)
            if total >= max_chars:
                break
    except QfidError:
        raise
    except Exception as exc:  # offline, unknown dataset, bad config: one line for the user
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise QfidError(f"could not load calibration dataset {name!r}: {reason}") from None
    if not texts:
        raise QfidError(f"calibration dataset {name!r} ({split}) has no text rows")
    return texts


def _dataset_parts(spec: str) -> tuple[str, str | None, str]:
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise QfidError(f"calibration dataset must be datasets:NAME[:CONFIG][:SPLIT]; got datasets:{spec}")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or "train"
