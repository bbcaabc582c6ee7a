"""A shard database's durable identity: which shard it is, and which incarnation.

A shard's LSNs only mean something together with the database that issued
them. A database that was lost and created again starts over at LSN 0; the
lake writer still holds the old database's watermark, and without a way to
tell the two apart it would resume past the new changes and let the shard
purge them (issue 18). So every database records, once, when it is created:

- ``shard``: the shard id it was created for. Opening it as another shard is
  refused (:class:`ShardIdMismatchError`): its LSNs would be mixed into
  another shard's stream.
- ``incarnation``: a random id (uuid4 hex). A database recreated from
  nothing gets a new one; a backup copied back keeps its own. The lake writer
  records it beside the shard's committed watermark and refuses a shard that
  comes back under another incarnation, or with an LSN below what the lake
  has committed (dolake/identity.py).
- ``created_at``: UTC seconds, for operators.

The row lives in ``_dosql_identity`` (one row), an internal table clients can
neither read through MetaGet nor write (the authorizer protects ``_dosql_*``).
A database created before identities existed gets one the first time it is
opened by this version.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from dosql.errors import ConfigurationError

DDL = (
    "CREATE TABLE IF NOT EXISTS _dosql_identity(id INTEGER PRIMARY KEY CHECK (id = 1), "
    "shard TEXT NOT NULL, incarnation TEXT NOT NULL, created_at INTEGER NOT NULL)"
)


class ShardIdMismatchError(ConfigurationError):
    """The database file belongs to another shard than the one starting on it."""

    default_code = "SHARD_ID_MISMATCH"


@dataclass(frozen=True)
class Identity:
    shard: str
    incarnation: str
    created_at: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure(conn: sqlite3.Connection, shard_id: str, path: str = "") -> Identity:
    """The database's identity, created on first open; refuse another shard's database.

    Call inside the startup write transaction (with the internal tables).
    """
    conn.execute(DDL)
    row = conn.execute(
        "SELECT shard, incarnation, created_at FROM _dosql_identity WHERE id = 1"
    ).fetchone()
    if row is None:
        ident = Identity(shard_id, uuid.uuid4().hex, int(time.time()))
        conn.execute(
            "INSERT INTO _dosql_identity(id, shard, incarnation, created_at) VALUES (1, ?, ?, ?)",
            (ident.shard, ident.incarnation, ident.created_at),
        )
        return ident
    ident = Identity(str(row[0]), str(row[1]), int(row[2]))
    if ident.shard != shard_id:
        where = f" {path}" if path else ""
        raise ShardIdMismatchError(
            f"database{where} was created for shard {ident.shard!r} (incarnation "
            f"{ident.incarnation}) and cannot be opened as shard {shard_id!r}: its change "
            f"log would be taken for {shard_id!r}'s. Start it with --id {ident.shard}, or "
            f"give shard {shard_id!r} its own database file",
            details={"db": path, "created_for": ident.shard, "opened_as": shard_id},
        )
    return ident
