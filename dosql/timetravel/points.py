"""Points in a table's history: what ``FOR SYSTEM_TIME AS OF`` can name.

A point is one of

- :class:`TimestampPoint` -- UTC microseconds since the epoch, the unit of the
  shards' commit timestamps (``_commit_ts`` in the lake's change log), so a
  point compares exactly with commit times;
- :class:`SnapshotPoint` -- an Iceberg snapshot of the table's mirror, by id or
  by ``branch@sequence-number``;
- :class:`LsnPoint` -- a position in one shard's change log.

Timestamps are written as ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM[:SS[.ffffff]]``
(``T`` may replace the space) with an optional zone ``Z`` or ``±HH:MM``. A
timestamp without a zone is UTC (commit timestamps are UTC throughout); one
with a zone is converted to UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from dosql.errors import ValidationError

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TIMESTAMP_FORMS = (
    "'YYYY-MM-DD', 'YYYY-MM-DD HH:MM:SS[.ffffff]' (or with T instead of the space), "
    "optionally followed by a zone 'Z' or '+HH:MM'/'-HH:MM'; without a zone the time is UTC"
)
_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


@dataclass(frozen=True)
class TimestampPoint:
    micros: int  # UTC microseconds since the epoch

    def __str__(self) -> str:
        return format_micros(self.micros)


@dataclass(frozen=True)
class SnapshotPoint:
    snapshot_id: int | None = None
    branch: str | None = None
    sequence: int | None = None

    def __str__(self) -> str:
        if self.snapshot_id is not None:
            return f"snapshot {self.snapshot_id}"
        return f"snapshot '{self.branch}@{self.sequence}'"


@dataclass(frozen=True)
class LsnPoint:
    lsn: int
    shard: str | None = None  # the one shard the statement is routed to

    def __str__(self) -> str:
        return f"LSN {self.lsn}" + (f" of {self.shard}" if self.shard else "")


Point = TimestampPoint | SnapshotPoint | LsnPoint


def _bad_timestamp(value: Any) -> ValidationError:
    return ValidationError(
        f"malformed timestamp {value!r} in FOR SYSTEM_TIME AS OF TIMESTAMP: use {TIMESTAMP_FORMS}",
        code="INVALID_INPUT",
    )


def parse_timestamp(value: Any) -> int:
    """A timestamp (text or ``datetime``) -> UTC microseconds since the epoch."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return _micros(moment)
    if not isinstance(value, str):
        raise _bad_timestamp(value)
    m = _TS.fullmatch(value.strip())
    if not m:
        raise _bad_timestamp(value)
    year, month, day, hour, minute, second, frac, zone = m.groups()
    tz = dt.UTC
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            raise _bad_timestamp(value)
        tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    try:
        moment = dt.datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        raise _bad_timestamp(value) from None
    return _micros(moment)


def _micros(moment: dt.datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_micros(micros: int) -> str:
    """UTC microseconds -> ``YYYY-MM-DD HH:MM:SS.ffffff+00:00`` (for messages)."""
    return (EPOCH + dt.timedelta(microseconds=micros)).isoformat(sep=" ")


def to_datetime(micros: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=micros)


def parse_snapshot(value: Any) -> SnapshotPoint:
    """A snapshot id (integer, or text of digits) or ``'branch@sequence'``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return SnapshotPoint(snapshot_id=value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+", text):
            return SnapshotPoint(snapshot_id=int(text))
        branch, at, seq = text.rpartition("@")
        if at and branch and re.fullmatch(r"\d+", seq):
            return SnapshotPoint(branch=branch, sequence=int(seq))
    raise ValidationError(
        f"malformed snapshot {value!r} in FOR SYSTEM_TIME AS OF SNAPSHOT: use an Iceberg "
        "snapshot id (an integer) or 'branch@sequence' such as 'main@42'",
        code="INVALID_INPUT",
    )


def parse_lsn(value: Any, shard: str | None = None) -> LsnPoint:
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return LsnPoint(value, shard)
    raise ValidationError(
        f"malformed LSN {value!r} in FOR SYSTEM_TIME AS OF LSN: use a non-negative integer",
        code="INVALID_INPUT",
    )
