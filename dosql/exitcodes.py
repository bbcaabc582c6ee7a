"""Exit statuses shared by every ``dosql`` and ``dolake`` command, psql style.

Scripts need to tell "my SQL is wrong" from "the cluster is down" from "I
called the tool wrong" without parsing stderr, so each failure class has its
own status (psql: 1 error, 2 bad connection, 3 script error; argparse's own 2
for usage errors is moved to 3 so it cannot be mistaken for a connection
problem):

====  ==========================================================================
0     success
1     the statement or request failed: the server answered with an error
      (syntax, constraint, not supported, read-only token, timeout on the server…),
      or a file or database named on the command line cannot be read
2     connection error: the server could not be reached, refused the login, or
      the connection was lost
3     usage error: bad arguments, no address to connect to, an invalid config or
      VSchema file
130   interrupted (Ctrl-C)
141   the output pipe was closed by the reader (``dosql tail … | head``): quiet
====  ==========================================================================
"""

from __future__ import annotations

import signal
from typing import Any

OK = 0
SQL_ERROR = 1
CONNECTION_ERROR = 2
USAGE_ERROR = 3
INTERRUPTED = 130
BROKEN_PIPE = 141

# Codes that mean "the command's input cannot be used" (a config or VSchema file).
USAGE_CODES = frozenset({"MISSING_CONFIG", "INVALID_CONFIG", "INVALID_VSCHEMA"})
# Codes that mean "no usable connection", whoever raised them.
CONNECTION_CODES = frozenset(
    {"RPC_UNAVAILABLE", "RPC_ERROR", "AUTHENTICATION_REQUIRED", "CONNECTION_CLOSED"}
)


def for_error(exc: BaseException, *, connecting: bool = False) -> int:
    """The exit status for a project or driver error (``connecting``: raised by connect())."""
    code = getattr(exc, "code", None)
    category = str(getattr(exc, "category", "") or "")
    details: Any = getattr(exc, "details", None) or {}
    if category == "configuration" or code in USAGE_CODES:
        return USAGE_ERROR
    if connecting and code == "INVALID_INPUT":
        return USAGE_ERROR  # a malformed address
    if connecting or code in CONNECTION_CODES:
        return CONNECTION_ERROR
    if code == "TIMEOUT" and isinstance(details, dict) and "url" in details:
        return CONNECTION_ERROR  # the client's socket went silent: the connection is gone
    return SQL_ERROR


def interruptible() -> None:
    """Make Ctrl-C raise KeyboardInterrupt (then exit 130) even when started with SIGINT
    ignored: Python keeps an inherited SIG_IGN (a background job of a script, some CI
    runners), and a shell or a tail that Ctrl-C cannot stop is no use on a terminal."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
