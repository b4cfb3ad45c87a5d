"""The one exception type users see: a clear, one-line reason and a non-zero exit.

Library code raises QfidError for bad input (missing model dir, unsupported architecture,
malformed suite file); the CLI's error boundary prints `error: <message>` and exits with
`exit_code`. Everything else is a bug and keeps its traceback (shown with QFID_DEBUG=1).
"""
from __future__ import annotations


class QfidError(Exception):
    """A user-facing error. `exit_code` 2 means usage/data error (the gate's convention)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
