"""Statement boundaries and placeholders, found without parsing the SQL.

A statement ends at a ``;`` outside string literals, quoted identifiers and
comments (as in the sqlite3 shell), so input can be fed line by line and a
statement may span lines. ``CREATE TRIGGER … BEGIN …; END`` bodies are not
recognised: the router refuses triggers anyway.
"""

from __future__ import annotations

import re

from dosql.statements import skip_opaque

_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _scan(text: str) -> tuple[list[int], bool]:
    """Offsets of the top-level ``;`` in ``text``, and whether it has placeholders."""
    ends: list[int] = []
    params = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if (after := skip_opaque(text, i)) is not None:
            i = after
        elif c == ";":
            ends.append(i)
            i += 1
        elif c == "?" or (c == ":" and _NAME.match(text, i + 1)):
            params = True
            i += 1
        else:
            i += 1
    return ends, params


def split(buffer: str) -> tuple[list[str], str]:
    """The complete statements in ``buffer`` (without their ``;``) and the unfinished rest."""
    ends, _ = _scan(buffer)
    statements, start = [], 0
    for end in ends:
        statement = buffer[start:end].strip()
        if statement and not _only_comments(statement):
            statements.append(statement)
        start = end + 1
    rest = buffer[start:]
    return statements, "" if _only_comments(rest) else rest


def split_all(text: str) -> list[str]:
    """Every statement in ``text``; a last one without ``;`` counts too (``-c "SELECT 1"``)."""
    statements, rest = split(text)
    if rest.strip():
        statements.append(rest.strip())
    return statements


def has_placeholders(statement: str) -> bool:
    """True if the statement has ``?`` or ``:name`` outside quotes and comments."""
    return _scan(statement)[1]


def _only_comments(text: str) -> bool:
    """True for whitespace and comments only (nothing to send)."""
    stripped = re.sub(r"--[^\n]*|/\*.*?(\*/|$)", "", text, flags=re.DOTALL)
    return not stripped.strip()
