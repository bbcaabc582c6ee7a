"""Just enough SQL lexing to classify a statement without parsing it.

The driver needs to know whether a statement writes rows (so it opens a
transaction first when ``autocommit`` is off, the way :mod:`sqlite3` does) and
whether it is a transaction-control statement sent as text (so
``in_transaction`` stays true to the server's state); a shard needs to know
whether an autocommit statement is a plain read (it then needs no captured
transaction of its own). It looks at the first keyword, skipping
comments; for ``WITH ...`` it looks at the first keyword after the common
table expressions, at parenthesis depth zero, so ``WITH x AS (...) INSERT ...``
counts as a write.
"""

from __future__ import annotations

import re

DML = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
DDL = frozenset({"CREATE", "DROP", "ALTER"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def skip_opaque(sql: str, i: int) -> int | None:
    """Where a comment, string literal or quoted name starting at ``i`` ends (the
    offset after it; ``len(sql)`` if unterminated), or None if none starts there.
    A doubled quote inside one (``'it''s'``) is an escaped quote, as in SQLite."""
    n = len(sql)
    if sql.startswith("--", i):
        j = sql.find("\n", i)
        return n if j < 0 else j + 1
    if sql.startswith("/*", i):
        j = sql.find("*/", i + 2)
        return n if j < 0 else j + 2
    c = sql[i]
    if c not in "'\"`[":
        return None
    close = "]" if c == "[" else c
    j = i + 1
    while True:
        j = sql.find(close, j)
        if j < 0 or close == "]" or not sql.startswith(close * 2, j):
            break
        j += 2
    return n if j < 0 else j + 1


def _tokens(sql: str):
    """Yield (depth, WORD) for bare words; skip strings, quoted names and comments."""
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif (after := skip_opaque(sql, i)) is not None:
            i = after
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            depth -= 1
            i += 1
        elif m := _WORD.match(sql, i):
            yield depth, m.group().upper()
            i = m.end()
        else:
            i += 1


def kind(sql: str) -> str:
    """One of: dml, select, ddl, begin, commit, rollback, savepoint, other."""
    tokens = _tokens(sql)
    first = next(tokens, (0, ""))[1]
    if first == "WITH":
        for depth, word in tokens:
            if depth == 0 and (word in DML or word in ("SELECT", "VALUES")):
                return "dml" if word in DML else "select"
        return "other"
    if first in DML:
        return "dml"
    if first in ("SELECT", "VALUES"):
        return "select"
    if first in DDL:
        return "ddl"
    if first == "BEGIN":
        return "begin"
    if first in ("COMMIT", "END"):
        return "commit"
    if first == "ROLLBACK":
        # ROLLBACK [TRANSACTION] TO [SAVEPOINT] x keeps the transaction open.
        rest = [w for _, w in tokens][:2]
        return "other" if "TO" in rest else "rollback"
    if first == "SAVEPOINT":
        return "savepoint"
    return "other"
