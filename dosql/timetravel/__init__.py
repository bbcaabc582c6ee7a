"""Time travel: the ``FOR SYSTEM_TIME AS OF`` clause and the points it names.

- :mod:`dosql.timetravel.dialect` -- the sqlglot dialect (SQLite plus the
  clause), :func:`parse`, :func:`temporal_refs`, :func:`strip`;
- :mod:`dosql.timetravel.points` -- timestamps, snapshots and LSNs as values.

Reading a table as of a point is the lake's job: :mod:`dolake.history`.
"""

from dosql.timetravel.dialect import (
    DIALECT,
    DoSQLite,
    HistoryRef,
    TemporalRef,
    history_refs,
    keep_column_names,
    parse,
    remaining_params,
    strip,
    temporal_refs,
)
from dosql.timetravel.points import (
    LsnPoint,
    Point,
    SnapshotPoint,
    TimestampPoint,
    parse_lsn,
    parse_snapshot,
    parse_timestamp,
)

__all__ = [
    "DIALECT",
    "DoSQLite",
    "HistoryRef",
    "LsnPoint",
    "Point",
    "SnapshotPoint",
    "TemporalRef",
    "TimestampPoint",
    "history_refs",
    "keep_column_names",
    "parse",
    "parse_lsn",
    "parse_snapshot",
    "parse_timestamp",
    "remaining_params",
    "strip",
    "temporal_refs",
]
