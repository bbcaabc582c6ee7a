"""Merging per-shard results exactly as one SQLite database would order and aggregate.

Ordering follows SQLite: NULL first (ascending), then INTEGER and REAL
compared numerically (Python compares int with float exactly, as SQLite
does), then TEXT by the column's collation, then BLOB by memcmp. Collations
BINARY, NOCASE (ASCII case folding only) and RTRIM are reproduced; for any
other collation — or one the router could not determine — comparing two
texts raises :class:`NotSupportedError` rather than guessing an order.

Aggregates merge per-shard partials: COUNT adds, SUM follows SQLite's
``sum()`` (integer when every input was an integer, NULL over no rows,
"integer overflow" past 64 bits), TOTAL is a float sum, MIN/MAX compare with
the argument's collation, AVG is ``TOTAL/COUNT`` pushed down as two hidden
columns. Float sums add per-shard partials, so their last bits may differ
from a single database's row-order sum (SQLite itself gives no order).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from functools import cmp_to_key
from typing import Any

from dosql.errors import NotSupportedError, QueryError
from dosql.router.plan import AggSpec, SortKey

Row = list[Any]
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
KNOWN_COLLATIONS = ("BINARY", "NOCASE", "RTRIM")


def _rank(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, int | float):
        return 1
    if isinstance(v, str):
        return 2
    return 3


def _text_key(s: str, collation: str | None) -> str:
    if collation == "BINARY":
        return s
    if collation == "NOCASE":
        return s.translate(_ASCII_LOWER)
    if collation == "RTRIM":
        return s.rstrip(" ")
    raise NotSupportedError(
        f"ordering text by collation {collation or '(unknown)'} across shards is not "
        "supported; add COLLATE BINARY, NOCASE or RTRIM"
    )


def compare(a: Any, b: Any, collation: str | None = "BINARY") -> int:
    """SQLite's ordering of two values; -1, 0 or 1."""
    ra, rb = _rank(a), _rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == 0:
        return 0
    if ra == 2:
        if a == b:
            return 0
        a, b = _text_key(a, collation), _text_key(b, collation)
    elif ra == 3:
        a, b = bytes(a), bytes(b)
    return (a > b) - (a < b)


def row_comparator(
    keys: Sequence[SortKey], collations: Sequence[str | None], base: int
) -> Callable:
    """Compare two rows by the hidden sort-key columns starting at ``base``."""

    def cmp(x: Row, y: Row) -> int:
        for key, coll in zip(keys, collations, strict=True):
            i = base + key.hidden
            a, b = x[i], y[i]
            if a is None or b is None:
                if a is None and b is None:
                    continue
                c = -1 if a is None else 1
                if not key.nulls_first:
                    c = -c
                return c
            c = compare(a, b, coll)
            if c:
                return -c if key.desc else c
        return 0

    return cmp


def kway_merge(
    streams: Sequence[Sequence[Row]],
    keys: Sequence[SortKey],
    collations: Sequence[str | None],
    n_hidden: int,
) -> list[Row]:
    """Merge per-shard sorted rows; rows keep their hidden columns (strip afterwards)."""
    streams = [s for s in streams if s]
    if not streams:
        return []
    width = len(streams[0][0])
    key = cmp_to_key(row_comparator(keys, collations, width - n_hidden))
    return list(heapq.merge(*streams, key=key))


def as_limit(value: Any, what: str) -> int:
    """SQLite's conversion of a LIMIT/OFFSET value (OP_MustBeInt)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
    raise QueryError(f"datatype mismatch: {what} must be an integer", code="QUERY_ERROR")


def apply_limit(rows: list[Row], limit: int | None, offset: int) -> list[Row]:
    start = max(offset, 0)
    if limit is None or limit < 0:
        return rows[start:]
    return rows[start : start + limit]


def strip_hidden(rows: list[Row], n_hidden: int) -> list[Row]:
    if not n_hidden:
        return rows
    return [r[:-n_hidden] for r in rows]


def _sum(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(isinstance(v, int) for v in vals):
        total = sum(vals)
        if not -(2**63) <= total < 2**63:
            raise QueryError("integer overflow", code="QUERY_ERROR")
        return total
    acc = 0.0
    for v in vals:
        acc += float(v) if isinstance(v, int | float) else 0.0
    return acc


def _total(values: list[Any]) -> float:
    acc = 0.0
    for v in values:
        if isinstance(v, int | float):
            acc += float(v)
    return acc


def _extreme(values: list[Any], collation: str | None, want_max: bool) -> Any:
    best = None
    for v in values:
        if v is None:
            continue
        if best is None:
            best = v
            continue
        c = compare(v, best, collation)
        if (c > 0) if want_max else (c < 0):
            best = v
    return best


def merge_aggregates(
    partials: Sequence[Row],
    specs: Sequence[AggSpec],
    collations: Sequence[str | None],
    n_hidden: int,
) -> Row:
    """One output row from each shard's one-row aggregate result."""
    if not partials:
        raise QueryError("no shard answered the aggregate", code="INTERNAL")
    width = len(partials[0]) - n_hidden
    out: Row = list(partials[0][:width])
    for spec, coll in zip(specs, collations, strict=True):
        col = [p[spec.index] for p in partials]
        if spec.func == "count":
            out[spec.index] = sum(int(v or 0) for v in col)
        elif spec.func == "sum":
            out[spec.index] = _sum(col)
        elif spec.func == "total":
            out[spec.index] = _total(col)
        elif spec.func in ("min", "max"):
            out[spec.index] = _extreme(col, coll, spec.func == "max")
        elif spec.func == "avg":
            assert spec.hidden is not None
            totals = [p[width + spec.hidden] for p in partials]
            counts = [p[width + spec.hidden + 1] for p in partials]
            n = sum(int(c or 0) for c in counts)
            out[spec.index] = (_total(totals) / n) if n else None
    return out
