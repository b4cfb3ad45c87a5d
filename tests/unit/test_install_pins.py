"""The README's two commands install the committed lock, never whatever upstream released
last: every `pip install` the Makefile would run for `make demo` / `make test` on a fresh
venv carries the constraints file, and CI refuses a venv that differs from the lock."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lock_module():
    spec = importlib.util.spec_from_file_location("ci_lock", ROOT / ".ci" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(target: str, tmp_path: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'fresh-venv'}"],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("target", ["demo", "test"])
def test_every_install_uses_the_constraints_file(target, tmp_path):
    lines = _dry_run(target, tmp_path)
    installs = [line for line in lines if re.search(r"\bpip\b.*\binstall\b", line)]
    assert len(installs) >= 3, lines          # pip itself, torch, qfid (+ test extras)
    unpinned = [line for line in installs if not re.search(r"(-c|--constraint)[ =]constraints\.txt\b", line)]
    assert unpinned == []
    assert any("torch==" in line for line in installs)


def test_the_lock_pins_the_cpu_torch_and_no_cuda_wheels():
    locked = _lock_module().parse((ROOT / "constraints.txt").read_text().splitlines())
    assert locked["torch"] == "2.13.0"
    assert not [name for name in locked if name.startswith("nvidia-")]
    for name in ("transformers", "compressed-tensors", "lm-eval", "fastapi", "uvicorn", "jinja2"):
        assert name in locked, name


def test_lock_write_drops_local_labels_cuda_wheels_and_qfid():
    lock = _lock_module()
    text = lock.render(lock.parse(["torch==2.13.0+cpu", "nvidia-cublas-cu12==12.1", "Jinja2==3.1.6",
                                   "qfid==0.1.0", "-e git+https://example/qfid#egg=qfid"]))
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["jinja2==3.1.6", "torch==2.13.0"]


def test_lock_check_reports_every_kind_of_difference():
    lock = _lock_module()
    locked = lock.parse(["a==1.0", "b==2.0", "c==3.0"])
    assert lock.mismatches(lock.parse(["a==1.0", "B==2.0", "c==3.0", "qfid==0.1.0"]), locked) == []
    problems = lock.mismatches(lock.parse(["a==1.1", "b==2.0", "d==4.0"]), locked)
    assert problems == ["a: installed 1.1, locked 1.0", "d: installed 4.0, not in the lock (run make lock)",
                        "c: locked 3.0, not installed"]


def test_ci_checks_the_venv_against_the_lock_before_the_tests():
    script = (ROOT / ".ci" / "run").read_text()
    check, tests = script.index(".ci/lock.py check constraints.txt"), script.index("\nmake test\n")
    assert "pip freeze" in script[:check] and check < tests
    for package in ("torch", "transformers", "compressed-tensors", "lm-eval"):
        assert f'"{package}"' in script
