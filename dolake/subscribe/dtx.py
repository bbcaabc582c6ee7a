"""Distributed transactions in the change stream: gathering their parts, their order.

A transaction committed atomically across shards has one part per participant
shard (same ``gtid``, same ``parts``, same ``commit_ts``), each contiguous in
its shard's log. Each shard's follower reads its own part; the parts are
gathered (:class:`Gather`) and delivered together, in :func:`delivery_order`:

- a key changed on several shards within the transaction (a row that moved
  shards: a delete on the old one, an insert on the new one) gets the events of
  the shards where it ends deleted first, so an upsert sink applying events per
  key in arrival order ends with the surviving row;
- every other event keeps its shard's LSN order (shards in id order).

That order is not each shard's LSN order, so positions inside the transaction
name the LSNs already delivered above each shard's entry (see
:mod:`dolake.subscribe.position`); resuming there delivers the rest of the same
order, nothing twice.

A sibling whose shard's follower is already past it (its last change is newer,
or is of that transaction: e.g. the subscription started after it there) is not
waited for. A sibling still to come is waited for as long as its follower makes
progress; once every missing sibling's follower has been stalled for
``Limits.dtx_wait_s`` -- at the end of its shard's log (a part that never comes),
or waiting in another distributed transaction (two transactions committed in
opposite orders on two shards at the very same microsecond) -- the parts present
are delivered, and a late part later on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from dosql import protocol


def participants(ch: protocol.Change, shards: Any) -> tuple[str, ...] | None:
    """The participants among ``shards`` (the subscription's) if ``ch`` belongs to a
    distributed transaction with 2+ of them, else None (delivered as a local one)."""
    if ch.gtid is None or not ch.parts:
        return None
    mine = tuple(sorted(set(ch.parts) & set(shards)))
    return mine if len(mine) >= 2 else None


@dataclass
class Gather:
    """The parts of one distributed transaction collected so far."""

    gtid: str
    parts: tuple[str, ...]
    commit_ts: int
    got: dict[str, list[protocol.Change]] = field(default_factory=dict)
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    emitting: bool = False

    def complete(self, last_seen: dict[str, tuple[int, str | None]]) -> bool:
        """Every participant's part is here, or its follower is past it."""
        for shard in self.parts:
            if shard in self.got:
                continue
            ts, gtid = last_seen.get(shard, (0, None))
            if not (ts > self.commit_ts or gtid == self.gtid):
                return False
        return True


def _key(ch: protocol.Change) -> tuple:
    return (ch.table.lower(), tuple(_hashable(v) for v in ch.key or ()))


def _hashable(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)  # SQLite: 1.0 = 1 as keys
    return v


def delivery_order(parts: dict[str, list[protocol.Change]]) -> list[tuple[str, protocol.Change]]:
    """The transaction's changes as ``(shard, change)`` in delivery order (module docstring)."""
    shards_of: dict[tuple, set[str]] = {}
    for shard, changes in parts.items():
        for ch in changes:
            if ch.op != "schema":
                shards_of.setdefault(_key(ch), set()).add(shard)
    cross = {k for k, shards in shards_of.items() if len(shards) > 1}
    first: list[tuple[str, protocol.Change]] = []
    rest: list[tuple[str, protocol.Change]] = []
    for shard in sorted(parts):
        changes = sorted(parts[shard], key=lambda c: c.lsn)
        last_op: dict[tuple, str] = {}
        for ch in changes:
            if ch.op != "schema" and _key(ch) in cross:
                last_op[_key(ch)] = ch.op
        vanishing = {k for k, op in last_op.items() if op == "delete"}
        for ch in changes:
            early = ch.op != "schema" and _key(ch) in vanishing
            (first if early else rest).append((shard, ch))
    return first + rest


__all__ = ["Gather", "delivery_order", "participants"]
