"""Which tables exist, as seen through a router.

SQLite reflection reads ``sqlite_master``, but through the router that
statement runs on the default shard only (it names no user table to route
by), and each shard also holds DoSQL's own ``_dosql_*`` bookkeeping tables.
So the list is: the default shard's user tables, plus the tables the router's
VSchema knows (``/status``: listed and learned tables) that exist — an
unsharded table on another shard is found by ``PRAGMA table_info``, which the
router sends to the table's own shard.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

INTERNAL_PREFIX = "_dosql_"
_HTTP = {"ws": "http", "wss": "https"}


def is_internal(name: str) -> bool:
    """DoSQL's bookkeeping tables (change log, metadata, 2PC records) on every shard."""
    return name.lower().startswith(INTERNAL_PREFIX)


def vschema_tables(ws_url: str, timeout: float = 5.0) -> list[str]:
    """The tables the router's VSchema names (``/status``), or ``[]`` if it cannot say.

    Best effort: reflection still works without it, it then lists only the
    default shard's tables.
    """
    parts = urlsplit(ws_url)
    scheme = _HTTP.get(parts.scheme)
    if scheme is None:
        return []
    url = urlunsplit((scheme, parts.netloc, "/status", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - our router
            status: Any = json.loads(reply.read())
    except (OSError, ValueError):
        return []
    if not isinstance(status, dict):
        return []
    names = list(status.get("tables") or []) + list(status.get("learned_tables") or [])
    return sorted({str(n) for n in names if isinstance(n, str) and not is_internal(n)})
