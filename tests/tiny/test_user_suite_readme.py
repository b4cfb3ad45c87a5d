"""The README's "Your own suite" example runs as written: its files are taken from the
README, its commands run through qfid's entry point on the tiny Llama (`./model` is the
only substitution), and the run holds one record per README row.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Your own suite")
    return text[start:text.index("\n## ", start + 1)]


def _files(section: str) -> dict[str, str]:
    """Code blocks introduced by a "`path`:" line are files to write."""
    return dict(re.findall(r"^`([^`\n]+)`:\n```\w*\n(.*?)^```", section, re.S | re.M))


def _commands(section: str) -> list[list[str]]:
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    return [shlex.split(line, comments=True) for block in blocks for line in block.splitlines() if line.startswith("qfid ")]


def _main(args: list[str]) -> int:
    from qfid.cli.app import main

    argv, sys.argv = sys.argv, ["qfid", *args]
    try:
        main()
        return 0
    except SystemExit as exited:
        return exited.code or 0
    finally:
        sys.argv = argv


@pytest.mark.slow
def test_readme_own_suite_example_runs(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    section = _section()
    files = _files(section)
    assert set(files) == {"my-contracts/items.csv", "my-contracts/suite.yaml"}
    monkeypatch.chdir(tmp_path)
    for name, body in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(body, encoding="utf-8")
    commands = _commands(section)
    assert [c[:2] for c in commands] == [["qfid", "suites"], ["qfid", "eval"], ["qfid", "suites"]]
    for command in commands:
        args = [str(tiny_llama_dir) if arg == "./model" else arg for arg in command[1:]]
        assert _main(args) == 0, capsys.readouterr().err
    assert "ok: suite my-contracts (3 items)" in capsys.readouterr().out

    from qfid.evals.store import RunStore

    records = RunStore(Path("reports/runs"), "base").records()
    assert sorted(records["id"]) == ["c-001", "c-002", "c-003"]
    assert set(records["suite"]) == {"my-contracts"}
    assert Path("tasks/qfid_my_contracts.yaml").is_file()
