"""Run one command as a child process and measure it the way the kernel accounts for it.

`os.wait4` returns the child's own rusage (its reaped descendants included): user and
system CPU seconds and `ru_maxrss`, the peak resident set, so each measured run is exactly
one process tree and nothing the parent did leaks into it. A timeout kills the child's
whole process group (it runs in its own session) and is recorded, never raised.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOG_TAIL_LINES = 15


@dataclass
class Measured:
    returncode: int | None
    timed_out: bool
    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_gb: float
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error(self) -> str | None:
        """One line for a failed run: the timeout, or the exit code and the log's last line."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        if self.returncode != 0:
            last = next((line for line in reversed(log_tail(self.log)) if line.strip()), "")
            return f"exit {self.returncode}: {last.strip()}"
        return None

    def as_dict(self) -> dict:
        return asdict(self)


def measure(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float) -> Measured:
    """Run `cmd` with stdout and stderr into `log_path`; its wall time, CPU times and peak RSS."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        reaped: list[tuple[int, int, object]] = []
        waiter = threading.Thread(target=lambda: reaped.append(os.wait4(proc.pid, 0)), daemon=True)
        waiter.start()
        waiter.join(timeout_s)
        timed_out = waiter.is_alive()
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
            waiter.join()
        wall = time.perf_counter() - t0
    _, status, usage = reaped[0]
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(returncode=proc.returncode, timed_out=timed_out, wall_s=wall, user_s=usage.ru_utime,
                    sys_s=usage.ru_stime, peak_rss_gb=usage.ru_maxrss / 2**20, log=str(log_path))


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a run's log (progress bars' carriage returns split into lines)."""
    text = Path(path).read_text(errors="replace").replace("\r", "\n")
    return text.splitlines()[-lines:]
