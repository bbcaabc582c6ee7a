"""Sharding-key values: SQLite type affinity and a canonical, type-stable encoding.

A row's sharding key must route to the same shard however the application
spells it. SQLite stores ``'42'`` inserted into an ``INTEGER`` column as the
integer 42, so the router must treat ``42``, ``42.0`` and ``'42'`` alike there;
in a ``TEXT`` column the same three are the texts ``'42'``, ``'42.0'``, ``'42'``.
This module reproduces what SQLite does to a value stored in a column of a
declared type (:func:`apply_affinity`, following "Datatypes In SQLite" §3),
then encodes the result as bytes that depend only on the value
(:func:`encode`): a one-byte type tag plus fixed bytes. Hashes of that
encoding are the same in every process and every run — nothing here uses
Python's ``hash()``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import sqlite3
import struct
import threading
from enum import StrEnum
from typing import Any

from dosql.errors import ValidationError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# SQLite values a sharding key can hold after conversion.
SQLValue = int | float | str | bytes


class Affinity(StrEnum):
    INTEGER = "INTEGER"
    TEXT = "TEXT"
    BLOB = "BLOB"
    REAL = "REAL"
    NUMERIC = "NUMERIC"


def affinity_of(column_type: str | None) -> Affinity:
    """The affinity SQLite gives a column declared with ``column_type``.

    ``None`` means "type unknown" and gives NUMERIC, the affinity of INTEGER
    columns for stored values, so integer keys behave as the common case
    expects. An empty declared type is SQLite's "no type": BLOB affinity.
    """
    if column_type is None:
        return Affinity.NUMERIC
    upper = column_type.upper()
    if "INT" in upper:
        return Affinity.INTEGER
    if "CHAR" in upper or "CLOB" in upper or "TEXT" in upper:
        return Affinity.TEXT
    if "BLOB" in upper or not upper.strip():
        return Affinity.BLOB
    if "REAL" in upper or "FLOA" in upper or "DOUB" in upper:
        return Affinity.REAL
    return Affinity.NUMERIC


# SQLite's notion of a well-formed numeric literal in text (sqlite3AtoF): ASCII
# digits only, optional sign, fraction and exponent, surrounding whitespace.
_SPACE = " \t\n\f\r\v"
_NUMERIC_TEXT = re.compile(
    rf"[{_SPACE}]*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)[{_SPACE}]*", re.ASCII
)
_INTEGER_TEXT = re.compile(r"[+-]?\d+", re.ASCII)


_sqlite: sqlite3.Connection | None = None
_sqlite_pid = 0
_sqlite_lock = threading.Lock()


def _ask_sqlite(sql: str, value: Any) -> Any:
    """Evaluate one scalar expression in a private in-memory SQLite.

    SQLite converts between decimal text and REAL with its own routines
    (in 3.40 long-double based, so the last digit can differ from Python's
    correctly rounded ``float()`` / ``%.15g``). Keys must convert exactly as the
    shards store them, so the few conversions that involve decimal floating
    point are done by SQLite itself. The result depends only on the value and
    the SQLite library, never on process state.
    """
    global _sqlite, _sqlite_pid
    with _sqlite_lock:
        if _sqlite is None or _sqlite_pid != os.getpid():  # never reuse one across fork()
            _sqlite = sqlite3.connect(":memory:", check_same_thread=False)
            _sqlite_pid = os.getpid()
        return _sqlite.execute(sql, (value,)).fetchone()[0]


def sqlite_real_text(value: float) -> str:
    """The text SQLite makes of a REAL stored in a TEXT column (``'42.0'``, ``'1.0e+20'``)."""
    return str(_ask_sqlite("SELECT CAST(? AS TEXT)", value))


def _integer_affinity(value: float) -> int | float:
    """A REAL that is exactly an int strictly inside the int64 range becomes INTEGER."""
    if math.isfinite(value) and value == int(value) and INT64_MIN < int(value) < INT64_MAX:
        return int(value)
    return value


def _numeric_from_text(text: str) -> int | float | None:
    """The number SQLite reads from ``text`` under NUMERIC affinity, or None."""
    match = _NUMERIC_TEXT.fullmatch(text)
    if match is None:
        return None
    literal = match.group(1)
    digits = literal.lstrip("+-").lstrip("0")
    # (Python's int() refuses very long digit strings; those are out of range anyway.)
    if _INTEGER_TEXT.fullmatch(literal) and len(digits) <= 19:
        as_int = -int(digits or "0") if literal.startswith("-") else int(digits or "0")
        if INT64_MIN <= as_int <= INT64_MAX:
            return as_int
    return _integer_affinity(float(_ask_sqlite("SELECT CAST(? AS REAL)", literal)))


def normalize(value: Any) -> SQLValue | None:
    """Map a Python value onto the SQLite storage class it would be bound as.

    bool is an integer (as sqlite3 binds it); dates become ISO text (as the
    sqlite3 adapters store them); bytearray/memoryview become bytes. NaN is
    stored by SQLite as NULL, so it comes back as None.
    """
    if value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValidationError(
                f"integer {value} does not fit in 64 bits, so SQLite cannot store it as a key",
                code="INVALID_INPUT",
            )
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, _dt.datetime):
        return value.isoformat(" ")
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise ValidationError(
        f"unsupported sharding key type {type(value).__name__}: use int, float, str or bytes",
        code="INVALID_INPUT",
    )


def apply_affinity(value: Any, column_type: str | None) -> SQLValue | None:
    """The value SQLite would store for ``value`` in a column declared ``column_type``."""
    value = normalize(value)
    if value is None or isinstance(value, bytes):
        return value  # NULL and BLOB are never converted
    affinity = affinity_of(column_type)
    if affinity is Affinity.BLOB:
        return value
    if affinity is Affinity.TEXT:
        if isinstance(value, str):
            return value
        return str(value) if isinstance(value, int) else sqlite_real_text(value)
    if isinstance(value, str):
        number = _numeric_from_text(value)
        if number is None:
            return value
        value = number
    if affinity is Affinity.REAL:
        return float(value)
    return _integer_affinity(value) if isinstance(value, float) else value


_INT_TAG = b"i"
_REAL_TAG = b"r"
_TEXT_TAG = b"t"
_BLOB_TAG = b"b"


def encode(value: SQLValue) -> bytes:
    """Canonical bytes of a converted value: a type tag, then fixed bytes.

    Numbers that SQLite compares equal encode equal: a REAL holding an exact
    64-bit integer is encoded as that integer, and -0.0 as 0.0. Text is UTF-8
    (lone surrogates kept, so every Python str encodes).
    """
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return _INT_TAG + struct.pack(">q", value)
    if isinstance(value, float):
        as_int = _integer_affinity(value)
        if isinstance(as_int, int):
            return _INT_TAG + struct.pack(">q", as_int)
        return _REAL_TAG + struct.pack(">d", value + 0.0)
    if isinstance(value, str):
        return _TEXT_TAG + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return _BLOB_TAG + value
    raise ValidationError(
        f"cannot encode {type(value).__name__} as a sharding key", code="INVALID_INPUT"
    )


# encode() of an int key in one pack: the INTEGER tag, then the int64 big-endian.
INT_KEY = struct.Struct(">cq")


def int_key_bounds(column_type: str | None) -> tuple[int, int] | None:
    """Ints ``low <= n <= high`` that a ``column_type`` column keeps as the INTEGER ``n``.

    For those, ``encode(apply_affinity(n, column_type)) == INT_KEY.pack(b"i", n)``,
    which lets a router skip the general conversion. REAL affinity stores a float,
    which encodes back as the same integer only while it is exact (up to 2**53);
    TEXT affinity makes text of it: None.
    """
    affinity = affinity_of(column_type)
    if affinity is Affinity.TEXT:
        return None
    if affinity is Affinity.REAL:
        return -(2**53), 2**53
    return INT64_MIN, INT64_MAX


def text_key_kept(column_type: str | None) -> bool:
    """True when a ``column_type`` column stores every str as that same text.

    TEXT and BLOB affinity never convert text; INTEGER, REAL and NUMERIC read
    numbers out of it.
    """
    return affinity_of(column_type) in (Affinity.TEXT, Affinity.BLOB)


def key_value(value: Any, column_type: str | None, *, table: str, column: str | None) -> SQLValue:
    """Convert a sharding-key value for routing; NULL is refused."""
    converted = apply_affinity(value, column_type)
    if converted is None:
        raise ValidationError(
            f"sharding key {table}.{column} is NULL: every row of a sharded table needs a "
            "non-NULL value in its sharding column",
            code="SHARDING_KEY_NULL",
            details={"table": table, "column": column},
        )
    return converted
