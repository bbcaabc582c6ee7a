"""Whether the lake may follow a shard that says hello: identity and LSN checks.

The lake's watermark for a shard (``dosql.committed.<shard>``) counts LSNs of
one database. A shard whose database was lost and created again restarts at
LSN 0 under the same shard id; resuming from the old watermark would skip its
new changes and, worse, tell it to purge them (issue 18). So a hello is judged
against what the lake holds for the shard before it is welcomed:

- another incarnation than the one the lake follows -> ``SHARD_IDENTITY_MISMATCH``
  (unless nothing of the old one is in the lake or its buffer: then the new one
  is simply adopted);
- a ``current_lsn`` below what the lake has committed or received ->
  ``SHARD_LSN_BEHIND`` (the database went back: recreated, or an old backup);
- first contact (no incarnation recorded, e.g. a lake from before identities)
  adopts the shard's incarnation, once the LSN check passed.

A refused shard gets neither a welcome nor ``Committed``, so it purges
nothing; its changes stay in its change log until an operator restores the
right database. A hello without an incarnation comes from a peer older than
these checks (or a test feeder): it is taken as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from dosql import protocol
from dosql.errors import CDCError


@dataclass(frozen=True)
class Verdict:
    """The outcome of a hello: refuse (``error``), or welcome and maybe adopt."""

    error: CDCError | None = None
    adopt: bool = False  # record the hello's incarnation as the shard's
    replaced: str = ""  # the incarnation given up for it (nothing of it in the lake)


def judge(hello: protocol.CDCHello, *, known: str, committed: int, received: int) -> Verdict:
    """Judge ``hello`` against the lake's ``known`` incarnation and LSNs for the shard."""
    mine = hello.incarnation
    if not mine:
        return Verdict()
    shard, current = hello.shard, hello.current_lsn
    if known and known != mine:
        if committed == 0 and received == 0:
            return Verdict(adopt=True, replaced=known)
        return Verdict(
            error=CDCError(
                f"shard {shard!r} came back as another database: the lake follows its "
                f"incarnation {known} (committed through LSN {committed}) but this database "
                f"is incarnation {mine} at LSN {current} -- it was lost and recreated, or "
                "replaced. The lake refuses it (following it would skip or misplace its "
                "changes) and tells it to purge nothing. Restore the shard's database from a "
                f"backup of incarnation {known}, then restart the shard",
                code="SHARD_IDENTITY_MISMATCH",
                details=_details(hello, known, committed),
            )
        )
    ahead = max(committed, received)
    if current < ahead:
        return Verdict(
            error=CDCError(
                f"shard {shard!r} is at LSN {current} but the lake already has its changes "
                f"through LSN {ahead}: its database went back (lost and recreated, or "
                "restored from an older backup). The lake refuses it (resuming would skip its "
                "new changes) and tells it to purge nothing. Restore the shard's database from "
                f"a backup at LSN {ahead} or later, then restart the shard",
                code="SHARD_LSN_BEHIND",
                details=_details(hello, known, committed),
            )
        )
    return Verdict(adopt=known != mine)


def _details(hello: protocol.CDCHello, known: str, committed: int) -> dict[str, object]:
    return {
        "shard": hello.shard,
        "lake_incarnation": known,
        "lake_committed_lsn": committed,
        "shard_incarnation": hello.incarnation,
        "shard_current_lsn": hello.current_lsn,
    }
