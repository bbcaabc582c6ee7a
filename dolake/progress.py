"""A progress bar for the maintenance commands (``dolake expire``, ``compact``,
``clean-orphans``): the request is one blocking round trip, so while it runs the
command polls the lake writer's ``GET /maintenance`` ``running`` (the operation,
the table it is at, tables done of total) and draws it on stderr.

Drawn when stderr is a terminal, or with ``DOLAKE_PROGRESS=1``; stdout keeps
the JSON answer only.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dolake.flush_cli import status
from dosql.errors import RPCError

WIDTH = 24


def enabled() -> bool:
    return sys.stderr.isatty() or os.environ.get("DOLAKE_PROGRESS") == "1"


def bar(operation: str, done: int, total: int, table: str | None, elapsed: float) -> str:
    filled = WIDTH * done // max(total, 1)
    where = f" {table}" if table else ""
    return (
        f"{operation} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} tables"
        f"{where} {elapsed:.1f}s"
    )


def run(url: str, operation: str, request: Callable[[], dict]) -> dict:
    """``request()`` (a blocking admin request), with a progress bar on stderr."""
    if not enabled():
        return request()
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["info"] = request()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    last = ""
    while worker.is_alive():
        worker.join(0.5)
        if not worker.is_alive():
            break
        try:
            running = status(url, timeout=2, path="/maintenance").get("running")
        except RPCError:
            continue
        if running and running.get("operation") == operation:
            last = bar(
                operation,
                running.get("done", 0),
                running.get("total", 0),
                running.get("table"),
                time.monotonic() - start,
            )
            print("\r" + last, end="", file=sys.stderr, flush=True)
    if "error" in outcome:
        if last:
            print(file=sys.stderr)
        raise outcome["error"]
    info = outcome["info"]
    total = len(info.get("tables", {}))
    print("\r" + bar(operation, total, total, None, time.monotonic() - start), file=sys.stderr)
    return info
