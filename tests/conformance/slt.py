"""The sqllogictest file format: parse records, format and compare results.

The formatting rules copy the reference harness (sqllogictest's ``slt_sqlite.c``
and ``sqllogictest.c``) byte for byte, because the expected results in the
``.test`` files were produced by it: a result that is right but printed
differently would otherwise be scored as a wrong answer.

- ``I`` columns print ``sqlite3_column_int`` with ``%d``: the value converted
  to a 64-bit integer by SQLite's rules, then cut to a C ``int`` (32 bits).
- ``R`` columns print ``sqlite3_column_double`` with SQLite's own ``%.3f``
  (its rounding differs from Python's on exact ties, so SQLite does it).
- ``T`` columns print ``sqlite3_column_text``: ``(empty)`` for an empty value,
  and every byte outside ``' '..'~'`` replaced by ``@``.
- ``NULL`` is ``NULL`` whatever the column type.
- ``rowsort`` sorts rows, ``valuesort`` sorts single values, both by
  ``strcmp`` of the printed values; the hash is the MD5 of every value
  followed by a newline.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

#: The database name the guards ``skipif``/``onlyif`` are checked against.
DB_NAME = "sqlite"

SORT_MODES = ("nosort", "rowsort", "valuesort")
_HASH_RE = re.compile(r"^(\d+) values? hashing to ([0-9a-f]{32})$")
_INT_PREFIX_RE = re.compile(r"^[ \t\n\f\r\v]*([+-]?)0*(\d*)")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class ParseError(ValueError):
    """A malformed .test file; the message names the file and line."""


@dataclass(frozen=True)
class Statement:
    """``statement ok`` / ``statement error`` followed by one SQL statement."""

    path: str
    line: int
    sql: str
    expect_ok: bool
    guards: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Query:
    """``query <types> <sort> [label]``: SQL, ``----``, expected values or hash."""

    path: str
    line: int
    sql: str
    types: str
    sort: str
    label: str | None
    expected: tuple[str, ...] | None  # the values, when listed
    expected_hash: tuple[int, str] | None  # (count, md5), when hashed
    guards: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HashThreshold:
    path: str
    line: int
    value: int
    guards: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Halt:
    path: str
    line: int
    guards: tuple[tuple[str, str], ...] = ()


Record = Statement | Query | HashThreshold | Halt


def applies(record: Record, db: str = DB_NAME) -> bool:
    """Whether the record's ``skipif``/``onlyif`` guards let it run on ``db``."""
    for kind, name in record.guards:
        if kind == "skipif" and name == db:
            return False
        if kind == "onlyif" and name != db:
            return False
    return True


# --------------------------------------------------------------------------- parsing


@dataclass
class _Lines:
    path: str
    lines: list[str]
    pos: int = 0
    pending: list[tuple[str, str]] = field(default_factory=list)

    def next_block(self) -> tuple[int, list[str]] | None:
        """The next run of non-blank, non-comment lines, with its first line number."""
        while self.pos < len(self.lines):
            text = self.lines[self.pos]
            if text.strip() == "" or text.startswith("#"):
                self.pos += 1
                continue
            start = self.pos
            block: list[str] = []
            while self.pos < len(self.lines) and self.lines[self.pos].strip() != "":
                if not self.lines[self.pos].startswith("#"):
                    block.append(self.lines[self.pos])
                self.pos += 1
            return start + 1, block
        return None


def parse_text(text: str, path: str = "<text>") -> list[Record]:
    """Every record of a .test file, in order (guards attached, not applied)."""
    lines = _Lines(path, text.splitlines())
    records: list[Record] = []
    while (item := lines.next_block()) is not None:
        lineno, block = item
        guards: list[tuple[str, str]] = []
        # Guards are lines of their own at the head of a record.
        while block and block[0].split()[0] in ("skipif", "onlyif"):
            tokens = block[0].split()
            if len(tokens) < 2:
                raise ParseError(f"{path}:{lineno}: {tokens[0]} needs a database name")
            guards.append((tokens[0], tokens[1]))
            block = block[1:]
            lineno += 1
        if not block:
            raise ParseError(f"{path}:{lineno}: guard without a record")
        records.append(_parse_record(path, lineno, block, tuple(guards)))
    return records


def parse_file(path: str | Path) -> list[Record]:
    p = Path(path)
    return parse_text(p.read_text(encoding="utf-8"), str(p))


def _parse_record(
    path: str, lineno: int, block: list[str], guards: tuple[tuple[str, str], ...]
) -> Record:
    tokens = block[0].split()
    head = tokens[0]
    where = f"{path}:{lineno}"
    if head == "statement":
        if len(tokens) < 2 or tokens[1] not in ("ok", "error"):
            raise ParseError(f"{where}: expected 'statement ok' or 'statement error'")
        sql = "\n".join(block[1:])
        if not sql:
            raise ParseError(f"{where}: statement without SQL")
        return Statement(path, lineno, sql, tokens[1] == "ok", guards)
    if head == "query":
        if len(tokens) < 2 or not tokens[1] or set(tokens[1]) - set("ITR"):
            raise ParseError(f"{where}: query needs a type string of I, T and R")
        sort = tokens[2] if len(tokens) > 2 else "nosort"
        if sort not in SORT_MODES:
            raise ParseError(f"{where}: unknown sort mode {sort!r}")
        label = tokens[3] if len(tokens) > 3 else None
        body = block[1:]
        expected: tuple[str, ...] | None = None  # no "----": run it, check nothing
        expected_hash = None
        sql_lines = body
        if "----" in body:
            cut = body.index("----")
            sql_lines, expected = body[:cut], tuple(body[cut + 1 :])
            if len(expected) == 1 and (m := _HASH_RE.match(expected[0])):
                expected, expected_hash = None, (int(m.group(1)), m.group(2))
        if not sql_lines:
            raise ParseError(f"{where}: query without SQL")
        sql = "\n".join(sql_lines)
        return Query(path, lineno, sql, tokens[1], sort, label, expected, expected_hash, guards)
    if head == "hash-threshold":
        if len(tokens) < 2 or not tokens[1].isdigit():
            raise ParseError(f"{where}: hash-threshold needs a number")
        return HashThreshold(path, lineno, int(tokens[1]), guards)
    if head == "halt":
        return Halt(path, lineno, guards)
    raise ParseError(f"{where}: unknown record {head!r}")


def iter_runnable(records: Sequence[Record], db: str = DB_NAME) -> Iterator[Record]:
    """The records that run on ``db``, stopping at an applicable ``halt``."""
    for record in records:
        if not applies(record, db):
            continue
        if isinstance(record, Halt):
            return
        yield record


# --------------------------------------------------------------------------- formatting

# SQLite itself converts values the way sqlite3_column_* do (text rendering of
# reals, text-to-number prefixes, printf rounding). One private in-memory
# connection per thread; results are cached because the same values recur.
_local = threading.local()


def _helper() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:")
        _local.conn = conn
    return conn


@lru_cache(maxsize=65536)
def _sqlite_scalar(sql: str, value: Any) -> Any:
    return _helper().execute(sql, (value,)).fetchone()[0]


def _to_int64(value: Any) -> int:
    """``sqlite3_column_int64``: SQLite's conversion of any value to an integer."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value:  # NaN: SQLite stores it as NULL; never reached in practice
            return 0
        if value <= _I64_MIN:
            return _I64_MIN
        if value >= _I64_MAX:
            return _I64_MAX
        return int(value)
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    # sqlite3Atoi64 on text: optional sign, leading digits, the rest ignored;
    # an overflow saturates.
    m = _INT_PREFIX_RE.match(str(value))
    assert m is not None
    sign, digits = m.groups()
    n = int(digits) if digits else 0
    n = -n if sign == "-" else n
    return max(_I64_MIN, min(_I64_MAX, n))


def _to_c_int(n: int) -> int:
    """A 64-bit integer cut to a C ``int`` the way ``sqlite3_column_int`` does."""
    n &= 0xFFFFFFFF
    return n - 0x100000000 if n >= 0x80000000 else n


def _to_double(value: Any) -> float:
    """``sqlite3_column_double``: SQLite's conversion of any value to a real."""
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    return float(_sqlite_scalar("SELECT CAST(? AS REAL)", str(value)))


def _to_text_bytes(value: Any) -> bytes:
    """``sqlite3_column_text``: the UTF-8 bytes SQLite would print for a value."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return str(_sqlite_scalar("SELECT CAST(? AS TEXT)", value)).encode()
    return str(value).encode("utf-8", "replace")


_PRINTABLE = bytes(c if 0x20 <= c <= 0x7E else 0x40 for c in range(256))


def format_value(value: Any, type_char: str) -> str:
    """One result value printed as the reference harness prints it."""
    if value is None:
        return "NULL"
    if type_char == "I":
        return str(_to_c_int(_to_int64(value)))
    if type_char == "R":
        return str(_sqlite_scalar("SELECT printf('%.3f', ?)", _to_double(value)))
    if type_char == "T":
        raw = _to_text_bytes(value)
        if not raw or raw[0] == 0:
            return "(empty)"
        return raw.translate(_PRINTABLE).decode("ascii")
    raise ValueError(f"unknown column type {type_char!r}")


class ColumnCountError(ValueError):
    """A result row whose width differs from the query's type string."""


def format_rows(rows: Sequence[Sequence[Any]], types: str) -> list[list[str]]:
    """Every row printed per the type string; a width mismatch raises."""
    out: list[list[str]] = []
    for row in rows:
        if len(row) != len(types):
            raise ColumnCountError(
                f"wrong number of result columns: expected {len(types)} but got {len(row)}"
            )
        out.append([format_value(v, t) for v, t in zip(row, types, strict=True)])
    return out


def sorted_values(rows: list[list[str]], sort: str) -> list[str]:
    """The flat value list in the order the sort mode asks for (strcmp order)."""
    if sort == "rowsort":
        rows = sorted(rows, key=lambda r: [v.encode() for v in r])
    values = [v for row in rows for v in row]
    if sort == "valuesort":
        values.sort(key=str.encode)
    return values


def md5_of(values: Sequence[str]) -> str:
    h = hashlib.md5()
    for v in values:
        h.update(v.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class Comparison:
    ok: bool
    expected: str  # a short rendering, for reports
    got: str


def _render(values: Sequence[str], limit: int = 12) -> str:
    shown = " ".join(values[:limit])
    return shown + (f" ... ({len(values)} values)" if len(values) > limit else "")


def compare(query: Query, rows: Sequence[Sequence[Any]]) -> Comparison:
    """Whether ``rows`` (raw values from an engine) are the query's expected result."""
    try:
        values = sorted_values(format_rows(rows, query.types), query.sort)
    except ColumnCountError as exc:
        want = query.expected_hash or query.expected
        return Comparison(False, str(want), str(exc))
    if query.expected_hash is not None:
        count, digest = query.expected_hash
        got_digest = md5_of(values)
        ok = count == len(values) and digest == got_digest
        return Comparison(
            ok,
            f"{count} values hashing to {digest}",
            f"{len(values)} values hashing to {got_digest}: {_render(values)}",
        )
    if query.expected is None:  # a query without "----" only has to run
        return Comparison(True, "(not checked)", _render(values))
    expected = list(query.expected)
    return Comparison(values == expected, _render(expected), _render(values))
