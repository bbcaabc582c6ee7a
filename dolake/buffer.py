"""Per-table change buffers with byte and event accounting.

Changes wait here, per source table in arrival order (per shard that is LSN
order), until a flush takes them. A flush *takes* a table's entries (so new
batches keep arriving while pyiceberg writes) and either commits them or
gives them back with :meth:`Buffers.restore`, in front of anything newer.
Bytes being flushed still count against ``max_buffer_size`` (``in_flight``),
so memory stays bounded while a slow commit runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dosql import protocol


@dataclass(slots=True)
class Entry:
    """One buffered change (slots: tens of thousands wait at once, and an
    instance dict would be one more object for the garbage collector to walk)."""

    shard: str
    change: protocol.Change
    size: int


@dataclass
class TableBuffer:
    entries: list[Entry] = field(default_factory=list)
    bytes: int = 0

    @property
    def events(self) -> int:
        return len(self.entries)


class Buffers:
    def __init__(self) -> None:
        self.tables: dict[str, TableBuffer] = {}
        self.in_flight = 0

    @property
    def bytes(self) -> int:
        return sum(b.bytes for b in self.tables.values())

    @property
    def events(self) -> int:
        return sum(b.events for b in self.tables.values())

    def add(self, table: str, entry: Entry) -> TableBuffer:
        buf = self.tables.setdefault(table, TableBuffer())
        buf.entries.append(entry)
        buf.bytes += entry.size
        return buf

    def take(
        self, table: str | None = None, cut: dict[str, int] | None = None
    ) -> dict[str, list[Entry]]:
        """Take the entries of ``table`` (or all tables) for a flush; with ``cut``
        only those with ``lsn <= cut[shard]`` (a shard ``cut`` does not name: all),
        the rest staying buffered in order (see dolake/distributed.py)."""
        names = [table] if table is not None else list(self.tables)
        taken: dict[str, list[Entry]] = {}
        for name in names:
            buf = self.tables.get(name)
            if buf is None:
                continue
            if cut is None:
                mine, rest = buf.entries, []
            else:
                mine, rest = [], []
                for e in buf.entries:
                    limit = cut.get(e.shard)
                    (mine if limit is None or e.change.lsn <= limit else rest).append(e)
            if rest:
                buf.entries = rest
                size = sum(e.size for e in mine)
                buf.bytes -= size
            else:
                del self.tables[name]
                size = buf.bytes
            if mine:
                taken[name] = mine
                self.in_flight += size
        return taken

    def entries(self) -> list[Entry]:
        """Every buffered entry (all tables)."""
        return [e for buf in self.tables.values() for e in buf.entries]

    def oldest_commit_ts(self) -> dict[str, int]:
        """Per shard, the commit time of its oldest (lowest-LSN) buffered change."""
        oldest: dict[str, tuple[int, int]] = {}
        for buf in self.tables.values():
            seen: set[str] = set()
            for e in buf.entries:
                if e.shard in seen:
                    continue  # entries of one shard are in LSN order within a table
                seen.add(e.shard)
                have = oldest.get(e.shard)
                if have is None or e.change.lsn < have[0]:
                    oldest[e.shard] = (e.change.lsn, e.change.commit_ts)
        return {s: ts for s, (_lsn, ts) in oldest.items()}

    def done(self, taken: dict[str, list[Entry]]) -> None:
        self.in_flight -= sum(e.size for entries in taken.values() for e in entries)

    def restore(self, table: str, entries: list[Entry]) -> None:
        """Give back entries a flush could not commit, ahead of newer ones."""
        buf = self.tables.setdefault(table, TableBuffer())
        buf.entries[:0] = entries
        buf.bytes += sum(e.size for e in entries)

    def min_lsn(self, shard: str) -> int | None:
        """Lowest LSN of ``shard`` still waiting in any buffer."""
        low: int | None = None
        for buf in self.tables.values():
            for e in buf.entries:
                if e.shard == shard:
                    if low is None or e.change.lsn < low:
                        low = e.change.lsn
                    break  # entries of one shard are in LSN order within a table
        return low

    def status(self) -> dict[str, dict[str, int]]:
        return {name: {"events": b.events, "bytes": b.bytes} for name, b in self.tables.items()}
