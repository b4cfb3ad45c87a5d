"""Run one benchmark case in a fresh interpreter (so its peak RSS and warm-up are its own)
and read back the JSON line its worker printed last."""
from __future__ import annotations

import json
import subprocess
import sys


def run_worker(script: str, args: list[str], what: str) -> dict:
    done = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
