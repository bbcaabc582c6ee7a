"""In-process change feed for driving dolake.writer.Writer directly in tests."""

from __future__ import annotations

from dolake.buffer import Entry
from dosql import protocol

COLS = [
    protocol.ColumnInfo("id", "INTEGER", True, 1),
    protocol.ColumnInfo("name", "TEXT", False, 0),
    protocol.ColumnInfo("amount", "REAL", False, 0),
]


class Feed:
    """Changes of table ``t`` from shard-0 with consecutive LSNs and commit times."""

    def __init__(self) -> None:
        self.lsn = 0

    def change(self, op: str, **kw) -> Entry:
        self.lsn += 1
        ch = protocol.Change(self.lsn, self.lsn, 1_700_000_000_000_000 + self.lsn, "t", op, **kw)
        return Entry("shard-0", ch, 64)

    def row(self, i: int) -> dict:
        return {"id": i, "name": f"name-{i}", "amount": i * 1.5}
