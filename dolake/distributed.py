"""Distributed transactions in the lake: where a flush may cut each shard's stream.

A transaction committed atomically across shards (two-phase commit) carries on
every participant the same ``gtid``, the same sorted ``parts`` (2+ shard ids)
and the same ``commit_ts``. The shards stream independently, so one
participant's part can reach the lake long before another's. A flush must
never commit half of such a transaction into a snapshot, so it cuts each
shard's stream (the per-shard LSN up to which it takes changes) at a point
where every distributed transaction is included on all of its participants or
on none.

Why the cut is a per-shard LSN, not a filter: the lake's watermarks say "every
change of shard S with ``lsn <=`` W is in this table", so what a flush takes of
a shard must be a prefix of its stream. Holding back transaction G on shard S
therefore holds back everything of S after G too, and with it the later
distributed transactions of S on their other participants: :func:`plan_cut`
lowers cuts until nothing changes (cuts only go down, so it ends).

When is a participant's part "there"? The streamer never splits a transaction
across batches (a batch ends at a transaction boundary), so a part is whole
once any of its changes is buffered. A part that is not buffered may already
be in the lake (a flush of another table committed it while this table's flush
failed, before or after a restart): that is known from

- ``committed_parts``: (gtid, shard) parts committed by this process, kept
  while the gtid still has buffered changes, and
- ``safe_ts[shard]``: every change of that shard committed before this time is
  in the lake (so its part of a transaction with an older ``commit_ts`` is
  too: commit times never decrease along a shard's LSNs). It is persisted with
  the committed watermarks, so it survives restarts.

A part that is neither is awaited: the transaction is held back until it
arrives. Single-shard transactions (``parts`` absent or of one shard) are
never held back for themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dolake.buffer import Entry


def participants(parts: list[str] | None) -> tuple[str, ...] | None:
    """The participant shards of a distributed transaction, or None for a local one."""
    if not parts:
        return None
    unique = tuple(sorted(set(parts)))
    return unique if len(unique) >= 2 else None


@dataclass
class DistributedTx:
    """What the buffers hold of one distributed transaction."""

    gtid: str
    parts: tuple[str, ...]
    commit_ts: int
    first_lsn: dict[str, int] = field(default_factory=dict)  # shard -> its part's first LSN


@dataclass
class Cut:
    """A flush's cut: per shard, the highest LSN it may take."""

    lsn: dict[str, int]
    held: dict[str, DistributedTx]  # gtid -> transactions held back (not whole yet)
    awaited: set[str]  # shards whose part some held-back transaction waits for


def collect(entries: Iterable[Entry]) -> dict[str, DistributedTx]:
    """The distributed transactions present in buffered ``entries``."""
    found: dict[str, DistributedTx] = {}
    for e in entries:
        ch = e.change
        if ch.gtid is None:
            continue
        parts = participants(ch.parts)
        if parts is None:
            continue
        tx = found.get(ch.gtid)
        if tx is None:
            tx = found[ch.gtid] = DistributedTx(ch.gtid, parts, ch.commit_ts)
        first = tx.first_lsn.get(e.shard)
        if first is None or ch.lsn < first:
            tx.first_lsn[e.shard] = ch.lsn
    return found


def plan_cut(
    received: Mapping[str, int],
    txs: Mapping[str, DistributedTx],
    *,
    committed_parts: Mapping[str, set[str]],
    safe_ts: Mapping[str, int],
) -> Cut:
    """The per-shard cut that includes every distributed transaction whole or not at all.

    ``received``: per shard, the highest LSN buffered (every shard streaming to
    the lake should be named). ``txs``: from :func:`collect` over all buffers.
    """
    cut = dict(received)
    held: dict[str, DistributedTx] = {}
    awaited: set[str] = set()
    for tx in txs.values():
        done = committed_parts.get(tx.gtid, set())
        missing = [
            p
            for p in tx.parts
            if p not in tx.first_lsn and p not in done and safe_ts.get(p, 0) <= tx.commit_ts
        ]
        if missing:
            held[tx.gtid] = tx
            awaited.update(missing)
    for tx in held.values():
        _exclude(cut, tx)
    changed = True
    while changed:  # a held-back part holds back what follows it on its shard
        changed = False
        for tx in txs.values():
            if tx.gtid in held:
                continue
            if any(lsn > cut.get(s, lsn) for s, lsn in tx.first_lsn.items()):
                held[tx.gtid] = tx
                _exclude(cut, tx)
                changed = True
    return Cut(cut, held, awaited)


def _exclude(cut: dict[str, int], tx: DistributedTx) -> None:
    for shard, lsn in tx.first_lsn.items():
        cut[shard] = min(cut.get(shard, lsn - 1), lsn - 1)


__all__ = ["Cut", "DistributedTx", "collect", "participants", "plan_cut"]
