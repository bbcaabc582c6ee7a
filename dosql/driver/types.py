"""PEP 249 type objects and constructors, and how column type codes are derived.

A column's ``type_code`` in ``cursor.description`` is a string: the declared
type as SQLite reports it (upper-cased, e.g. ``"INTEGER"``, ``"VARCHAR(20)"``,
``"DATETIME"``), or, for expressions without a declared type, the storage
class of the first non-NULL value in the first chunk (``"INTEGER"``, ``"REAL"``,
``"TEXT"``, ``"BLOB"``), or ``None`` when nothing tells (no rows, or only
NULLs). Columns named ``rowid``, ``oid`` or ``_rowid_`` without another
declared type get ``"ROWID"``.

The type objects compare equal to type codes by SQLite's column affinity
rules, so ``description[i][1] == NUMBER`` works for ``INT``, ``BIGINT``,
``DOUBLE``, ``DECIMAL(10,2)`` alike:

- ``DATETIME``: the type mentions ``DATE`` or ``TIME`` (``DATE``,
  ``DATETIME``, ``TIMESTAMP``, ``TIME``) — these are checked first;
- ``STRING``: TEXT affinity (``CHAR``, ``CLOB``, ``TEXT``);
- ``BINARY``: BLOB affinity (``BLOB``);
- ``NUMBER``: INTEGER, REAL or NUMERIC affinity, and ``ROWID``;
- ``ROWID``: ``ROWID`` only.

Values come back as SQLite stores them (None, int, float, str, bytes); the
driver does not convert text back to dates. ``Date``/``Time``/``Timestamp``
values given as parameters are sent as ISO 8601 text, like :mod:`sqlite3`'s
default adapters (``datetime`` with a space separator).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249 name
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802 - PEP 249 name
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802 - PEP 249 name
    return Timestamp(*time.localtime(ticks)[:6])


def affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type (section 3.1 of datatype3.html)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t.strip():
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def _is_datetime(code: str) -> bool:
    return "DATE" in code or "TIME" in code


class DBAPITypeObject:
    """Compares equal to every type code in its group (PEP 249 "Type Objects")."""

    def __init__(self, name: str, *, matches: Any) -> None:
        self.name = name
        self._matches = matches

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return other is self
        if isinstance(other, str):
            return bool(self._matches(other.upper()))
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<DB-API type {self.name}>"


DATETIME = DBAPITypeObject("DATETIME", matches=_is_datetime)
STRING = DBAPITypeObject(
    "STRING", matches=lambda c: not _is_datetime(c) and c != "ROWID" and affinity(c) == "TEXT"
)
BINARY = DBAPITypeObject(
    "BINARY", matches=lambda c: not _is_datetime(c) and c != "ROWID" and affinity(c) == "BLOB"
)
NUMBER = DBAPITypeObject(
    "NUMBER",
    matches=lambda c: (
        c == "ROWID" or (not _is_datetime(c) and affinity(c) in ("INTEGER", "REAL", "NUMERIC"))
    ),
)
ROWID = DBAPITypeObject("ROWID", matches=lambda c: c == "ROWID")

_ROWID_NAMES = {"rowid", "oid", "_rowid_"}
_STORAGE_CLASS = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


def type_code(name: str, decltype: str | None, sample: Any = None) -> str | None:
    """The type code of one result column (see the module docstring)."""
    if decltype:
        code = decltype.strip().upper()
        if code == "INTEGER" and name.lower() in _ROWID_NAMES:
            return "ROWID"
        return code
    if name.lower() in _ROWID_NAMES and isinstance(sample, int):
        return "ROWID"
    return _STORAGE_CLASS.get(type(sample)) if sample is not None else None


def describe(
    columns: list[str], decltypes: list[str | None] | None, rows: list[list[Any]]
) -> tuple[tuple[Any, ...], ...]:
    """``cursor.description``: one 7-tuple per column, type codes as above."""
    decls = list(decltypes or [])
    decls += [None] * (len(columns) - len(decls))
    out = []
    for i, (name, decl) in enumerate(zip(columns, decls, strict=True)):
        sample = None
        if not decl:
            sample = next((row[i] for row in rows if i < len(row) and row[i] is not None), None)
        out.append((name, type_code(name, decl, sample), None, None, None, None, None))
    return tuple(out)


def adapt(value: Any) -> Any:
    """One parameter as a SQLite value, or raise TypeError/OverflowError saying why.

    Subclasses of str, float, int and bytes (SQLAlchemy's ``quoted_name``,
    ``enum.StrEnum``/``IntEnum`` members, ``numpy.float64``) are sent as the
    plain type: the wire encoder only takes the exact types.
    """
    t = type(value)
    if value is None or t is str or t is float or t is bytes:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise OverflowError(f"integer {value} does not fit in SQLite's 64-bit INTEGER")
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(
        f"type {type(value).__name__} is not supported: use None, int, float, str, bytes, "
        "or date/time/datetime (sent as ISO 8601 text)"
    )
