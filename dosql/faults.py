"""Crash points: SIGKILL this process at a named step, for the fault tests.

``DOSQL_CRASH_AT=<name>[:<n>]`` (comma-separated for several) in a process's
environment kills it with SIGKILL the ``n``-th time (default: the first) it
reaches :func:`crash_point` ``(name)`` — a real crash at an exact step of a
protocol, which no timing-based kill can hit reliably. Unset (always, in
production) a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_hits: dict[str, int] = {}
_lock = threading.Lock()


def _armed() -> dict[str, int]:
    spec = os.environ.get("DOSQL_CRASH_AT", "")
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        armed[name] = int(nth) if nth else 1
    return armed


_ARMED = _armed()


def crash_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if ``DOSQL_CRASH_AT`` names this point."""
    nth = _ARMED.get(name)
    if nth is None:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] < nth:
            return
    sys.stderr.write(f"DOSQL_CRASH_AT: crashing at {name}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
