"""Opening a shard's SQLite database: pragmas, SQL functions, the authorizer.

Every connection the shard opens goes through :func:`open_connection`, so all
of them agree on the pragmas the operations guide asks for (WAL,
``synchronous``, cache, mmap, temp store, busy timeout), on
``recursive_triggers`` (REPLACE's implicit deletes fire the capture triggers)
and ``foreign_keys``, and all of them carry the capture functions and the
authorizer that protects the internal ``_dosql_*`` tables.

Connections are opened with ``isolation_level=None`` (the shard issues
BEGIN/COMMIT itself) and ``check_same_thread=False``: each one is used by one
worker thread at a time, which the pool guarantees by handing it out
exclusively.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dosql.config import ShardConfig

INTERNAL_PREFIX = "_dosql_"
TRIGGER_PREFIX = "_dosql_trg_"

_encode = msgspec.msgpack.Encoder().encode

# Pragma names a client may never assign: they change durability, capture or
# the shared state of pooled connections.
_PROTECTED_PRAGMAS = frozenset(
    [
        "journal_mode",
        "synchronous",
        "foreign_keys",
        "recursive_triggers",
        "writable_schema",
        "query_only",
        "locking_mode",
        "temp_store",
        "mmap_size",
        "cache_size",
        "busy_timeout",
        "trusted_schema",
        "wal_autocheckpoint",
        "journal_size_limit",
        "auto_vacuum",
        "page_size",
        "schema_version",
        "ignore_check_constraints",
        "case_sensitive_like",
        "reverse_unordered_selects",
        "legacy_alter_table",
        "cell_size_check",
        "secure_delete",
        "automatic_index",
        "count_changes",
        "full_column_names",
        "short_column_names",
        "encoding",
        "max_page_count",
        "soft_heap_limit",
        "hard_heap_limit",
        "threads",
        "analysis_limit",
    ]
)
# Pragmas that take an argument but only read (allowed for read-scope sessions).
_READ_PRAGMAS = frozenset(
    [
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "function_list",
        "pragma_list",
        "collation_list",
        "database_list",
        "compile_options",
    ]
)

_WRITE_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_CREATE_VTABLE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_INDEX,
        sqlite3.SQLITE_DROP_TEMP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_TRIGGER,
        sqlite3.SQLITE_DROP_TEMP_VIEW,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_DROP_VTABLE,
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_REINDEX,
        sqlite3.SQLITE_ANALYZE,
    }
)
_DDL_ACTIONS = _WRITE_ACTIONS - {
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_DELETE,
}


def is_internal(name: str | None) -> bool:
    return bool(name) and name.lower().startswith(INTERNAL_PREFIX)  # type: ignore[union-attr]


@dataclass
class ConnState:
    """Python-side state of one pooled connection (read by SQL functions and the authorizer)."""

    conn: sqlite3.Connection
    allocate_txid: Callable[[], int]
    txid: int | None = None  # allocated at the first captured change of a write transaction
    internal: bool = False  # the shard's own statements: everything allowed
    read_only: bool = False  # the session using it has read scope
    # Closed instead of pooled at release: it saw a storage error, or was opened while
    # the file was not writable (SQLite then opens it read-only for good; storage.py).
    recycle: bool = False
    # Per statement, reset by begin_statement():
    ddl_seen: bool = False
    altered: set[str] = field(default_factory=set)  # tables named by ALTER TABLE
    dropped: set[str] = field(default_factory=set)  # tables named by DROP TABLE
    denied: tuple[str, str] | None = None  # (code, message) of the last authorizer refusal
    inserted: bool = False  # the statement itself inserts (so its lastrowid means something)
    # Per session transaction, reset by Shard.begin(): its DDL statements as (sql, params,
    # max lsn before, max lsn after), for the redo record of a prepare (redo.py).
    ddl_log: list[tuple[str, Any, int, int]] = field(default_factory=list)

    def begin_statement(self) -> None:
        self.ddl_seen = False
        self.altered = set()
        self.dropped = set()
        self.denied = None
        self.inserted = False

    def txid_for_trigger(self) -> int:
        if self.txid is None:
            self.txid = self.allocate_txid()
        return self.txid

    # ------------------------------------------------------------------ authorizer

    def authorize(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        dbname: str | None,
        source: str | None,
    ) -> int:
        """sqlite3 authorizer: why a statement may not run is recorded in ``denied``."""
        if action in _DDL_ACTIONS:
            self.ddl_seen = True
            if action == sqlite3.SQLITE_ALTER_TABLE and arg2:
                self.altered.add(arg2)
            if action == sqlite3.SQLITE_DROP_TABLE and arg1:
                self.dropped.add(arg1.lower())
        if self.internal:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_INSERT and source is None:
            self.inserted = True
        from_capture = bool(source) and source.lower().startswith(TRIGGER_PREFIX)  # type: ignore[union-attr]
        if action == sqlite3.SQLITE_TRANSACTION or action == sqlite3.SQLITE_SAVEPOINT:
            if action == sqlite3.SQLITE_TRANSACTION:
                return self._deny(
                    "TRANSACTION_STATE",
                    "transaction control must be the whole statement (BEGIN, COMMIT, ROLLBACK) "
                    "or the protocol's Begin/Commit/Rollback messages",
                )
            return sqlite3.SQLITE_OK
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self._deny("PERMISSION_DENIED", "ATTACH and DETACH are not allowed on a shard")
        if action == sqlite3.SQLITE_FUNCTION:
            if is_internal(arg2) and not from_capture:
                return self._deny(
                    "INTERNAL_TABLE", f"function {arg2} is internal to the shard's change capture"
                )
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            return self._authorize_pragma((arg1 or "").lower(), arg2)
        if action not in _WRITE_ACTIONS:
            return sqlite3.SQLITE_OK
        if from_capture:
            return sqlite3.SQLITE_OK
        if self.read_only:
            return self._deny(
                "READ_ONLY",
                "this connection has read-only scope: writes and schema changes need an admin token",
            )
        if action == sqlite3.SQLITE_DROP_TRIGGER and (arg2 or "").lower() in self.dropped:
            return sqlite3.SQLITE_OK  # DROP TABLE removes the table's capture triggers
        if (arg1 or "").lower() == "sqlite_sequence" and (self.altered or self.dropped):
            return sqlite3.SQLITE_OK  # RENAME / DROP TABLE maintain AUTOINCREMENT counters
        names = [arg1, arg2] if action != sqlite3.SQLITE_ALTER_TABLE else [arg2]
        for name in names:
            if is_internal(name) or (name or "").lower() == "sqlite_sequence":
                return self._deny(
                    "INTERNAL_TABLE",
                    f"{name} is internal to the shard (change capture); it cannot be written, "
                    "altered or dropped through the protocol — read it with ReadChanges/LsnInfo",
                )
        return sqlite3.SQLITE_OK

    def _authorize_pragma(self, name: str, arg: str | None) -> int:
        if arg is None:
            return sqlite3.SQLITE_OK
        if self.read_only and name not in _READ_PRAGMAS:
            return self._deny("READ_ONLY", f"PRAGMA {name} with an argument needs an admin token")
        if name in _PROTECTED_PRAGMAS:
            return self._deny(
                "PERMISSION_DENIED",
                f"PRAGMA {name} is managed by the shard and cannot be changed by clients",
            )
        return sqlite3.SQLITE_OK

    def _deny(self, code: str, message: str) -> int:
        if self.denied is None:
            self.denied = (code, message)
        return sqlite3.SQLITE_DENY


def pack(*values: Any) -> bytes:
    """msgpack array of the arguments: NULL, 64-bit ints, float64, text and blobs exactly."""
    return _encode(list(values))


def pack_map(*pairs: Any) -> bytes:
    """msgpack map of alternating name/value arguments (a row image)."""
    return _encode(dict(zip(pairs[::2], pairs[1::2], strict=True)))


def merge_maps(*parts: bytes) -> bytes:
    """Join images packed in pieces (SQL functions take at most 127 arguments)."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(msgspec.msgpack.decode(part))
    return _encode(merged)


def configure(conn: sqlite3.Connection, cfg: ShardConfig, *, readonly: bool = False) -> None:
    """Apply the operations guide's pragmas to a fresh connection."""
    conn.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_ms)}")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not switch the database to WAL mode ({mode})")
    conn.execute(f"PRAGMA synchronous = {cfg.synchronous}")
    conn.execute(f"PRAGMA cache_size = {int(cfg.cache_size)}")
    conn.execute(f"PRAGMA temp_store = {cfg.temp_store}")
    conn.execute(f"PRAGMA mmap_size = {int(cfg.mmap_size)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA recursive_triggers = ON")


def open_connection(path: str, cfg: ShardConfig, allocate_txid: Callable[[], int]) -> ConnState:
    """A read-write connection with capture functions and the authorizer installed."""
    # cached_statements=0: the authorizer runs when a statement is prepared, and a
    # pooled connection serves sessions of different scopes and the shard's own
    # statements; a cached statement would carry one caller's rights to the next.
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=cfg.busy_timeout_ms / 1000,
        cached_statements=0,
    )
    configure(conn, cfg)
    state = ConnState(conn, allocate_txid)
    det = {"deterministic": True}
    conn.create_function("_dosql_txid", 0, state.txid_for_trigger)
    conn.create_function("_dosql_pack", -1, pack, **det)
    conn.create_function("_dosql_map", -1, pack_map, **det)
    conn.create_function("_dosql_merge", -1, merge_maps, **det)
    conn.set_authorizer(state.authorize)
    return state


def open_readonly(path: str, cfg: ShardConfig | None = None) -> sqlite3.Connection:
    """A read-only connection (``dosql changes``, health checks); works while the shard runs."""
    from pathlib import Path
    from urllib.parse import quote

    uri = "file:" + quote(str(Path(path).resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    if cfg is not None:
        conn.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_ms)}")
    else:
        conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
