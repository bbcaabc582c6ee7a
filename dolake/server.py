"""The lake writer process: CDC ingest, flush scheduling, Flush requests, status.

One trio event loop serves every connection; all pyiceberg/pyarrow work runs
in a worker thread (one flush at a time, under ``flush_lock``), so batches
keep being acknowledged (or refused with ``buffer_full``) while a flush runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection

from dolake import compaction, distributed, identity, maintenance
from dolake.buffer import Buffers
from dolake.catalog import catalog_properties, open_catalog
from dolake.ingest import Session
from dolake.metrics import Metrics
from dolake.subscribe import PATH as SUBSCRIBE_PATH
from dolake.subscribe import SubscribeContext, handle_subscriber
from dolake.writer import TableFlush, Writer
from dosql import protocol
from dosql.config import Config
from dosql.errors import AuthorizationError, CDCError, DoSQLError, StorageError, ValidationError
from dosql.service import Service

log = logging.getLogger(__name__)


@dataclass
class Source:
    """What the lake knows of one shard's stream."""

    shard: str
    committed: int = 0  # every change <= this is in the lake (both sides of every table)
    received: int = 0  # highest LSN buffered (or committed)
    received_ts: int = 0  # commit time of the change at ``received`` (0: none this run)
    safe_ts: int = 0  # every change of the shard committed before this is in the lake
    session: Session | None = None
    last_batch_at: float | None = None
    oldest_pending_at: float | None = None
    current_lsn: int = 0
    oldest_lsn: int = 0
    incarnation: str = ""  # the shard database the watermark belongs to (dolake/identity.py)
    refused: dict[str, Any] | None = None  # why its last hello was refused: code, message, at


class LakeServer:
    def __init__(self, config: Config, data_dir: str | Path) -> None:
        self.full_config = config
        self.config = config.lake
        self.data_dir = Path(data_dir)
        self.metrics = Metrics()
        self.buffers = Buffers()
        self.sources: dict[str, Source] = {}
        self.flush_lock = trio.Lock()
        self.flush_wanted = trio.Event()
        self.last_flush: dict[str, Any] = {}
        self.table_errors: dict[str, str] = {}
        self.last_commit_at: float | None = None
        # buffer_full triggers a flush at once: retry about when it should be done
        self.retry_after_ms = max(20, min(250, config.lake.flush_interval_ms // 10))
        self.known_shards: set[str] | None = None
        reference: dict[str, str] = {}
        try:
            vs = config.load_vschema()
            self.known_shards = set(vs.shard_ids)
            for name, table in vs.tables.items():
                if table.kind == "reference" and vs.shard_ids:
                    reference[name.lower()] = vs.shard_ids[0]
        except Exception as exc:  # no VSchema: any shard may connect, no reference tables
            log.info("no VSchema loaded", extra={"reason": str(exc)})
        catalog = open_catalog(config.lake, data_dir)
        self.writer = Writer(
            catalog,
            namespace=config.lake.namespace,
            row_group_size=config.lake.parquet_row_group_size,
            reference_tables=reference,
            index_dir=self.data_dir / "lake" / "mirror_index",
            mirror_buckets=config.lake.mirror_buckets,
            metadata_versions_max=config.lake.metadata_versions_max,
        )
        self.retention = maintenance.Retention(
            config.lake.snapshot_retention_ms, config.lake.min_snapshots_to_keep
        )
        self.last_expiry: dict[str, Any] = {}
        self.compaction = compaction.Policy(
            min_files=config.lake.min_files_threshold,
            target_file_size=config.lake.target_file_size_bytes,
            max_files=config.lake.max_files_per_compaction,
            min_age_ms=config.lake.min_partition_age_ms,
        )
        self.last_compaction: dict[str, Any] = {}
        # the maintenance run in progress (GET /maintenance "running": the CLIs' progress bar)
        self.running: dict[str, Any] | None = None
        self.last_orphan_cleanup: dict[str, Any] = {}
        for shard, lsn in self.writer.committed().items():
            self.sources[shard] = Source(shard, committed=lsn, received=lsn)
        for shard, ts in self.writer.safe_ts().items():
            self.sources.setdefault(shard, Source(shard)).safe_ts = ts
        for shard, incarnation in self.writer.incarnations().items():
            self.sources.setdefault(shard, Source(shard)).incarnation = incarnation
        # distributed transactions (dolake/distributed.py): parts committed by this
        # process whose gtid still has buffered changes, and the shards a held-back
        # transaction waits for (their batches are taken even when the buffer is full)
        self.committed_parts: dict[str, set[str]] = {}
        self.awaited: set[str] = set()
        self.held_back: dict[str, Any] = {}
        self.subscribe_ctx = SubscribeContext.from_config(config, data_dir)
        for lt in self.writer.tables.values():
            if lt.committed_at and (self.last_commit_at or 0) < lt.committed_at:
                self.last_commit_at = lt.committed_at
        self.service = Service(
            "lake",
            tokens=config.tokens,
            registry=self.metrics.registry,
            status=self.status,
            deep_health=self.deep_health,
            ws_paths=("/", "/cdc", SUBSCRIBE_PATH),
            routes={"/maintenance": self.maintenance_status},
        )

    # ------------------------------------------------------------------ sessions

    async def attach(self, session: Session, hello: protocol.CDCHello) -> Source:
        source = self.sources.setdefault(hello.shard, Source(hello.shard))
        old = source.session
        if old is not None and old is not session:
            log.warning("shard reconnected; closing its previous session", extra=_x(hello.shard))
            old.closed = True
            with trio.move_on_after(1):
                await old.conn.aclose()
        source.session = session
        source.current_lsn, source.oldest_lsn = hello.current_lsn, hello.oldest_lsn
        self.update_gauges()
        log.info("shard connected", extra={**_x(hello.shard), "committed_lsn": source.committed})
        return source

    async def admit(self, hello: protocol.CDCHello) -> CDCError | None:
        """Judge a hello against the shard's recorded identity (dolake/identity.py):
        the refusal to send, or None after recording a newly adopted incarnation."""
        source = self.sources.setdefault(hello.shard, Source(hello.shard))
        verdict = identity.judge(
            hello, known=source.incarnation, committed=source.committed, received=source.received
        )
        if verdict.error is not None:
            exc = verdict.error
            source.refused = {"code": exc.code, "message": exc.message, "at": time.time()}
            source.current_lsn, source.oldest_lsn = hello.current_lsn, hello.oldest_lsn
            log.error(
                "SHARD REFUSED: its database is not the one the lake followed; not resuming, "
                "nothing will be purged",
                extra={**_x(hello.shard), "code": exc.code, "error": exc.message},
            )
            return exc
        if verdict.adopt:
            await trio.to_thread.run_sync(
                self.writer.save_incarnation, hello.shard, hello.incarnation
            )
            if verdict.replaced:
                log.warning(
                    "shard came back as a new database; nothing of the old one is in the lake, "
                    "following the new one",
                    extra={**_x(hello.shard), "old": verdict.replaced, "new": hello.incarnation},
                )
            source.incarnation = hello.incarnation
        source.refused = None
        return None

    def detach(self, session: Session) -> None:
        if session.shard and self.sources.get(session.shard):
            source = self.sources[session.shard]
            if source.session is session:
                source.session = None
                log.info("shard disconnected", extra=_x(session.shard))
        self.update_gauges()

    # ------------------------------------------------------------------ flushing

    def buffer_full(self) -> bool:
        used = self.buffers.bytes + self.buffers.in_flight
        return used > 0 and used >= self.config.max_buffer_size

    def request_flush(self) -> None:
        self.flush_wanted.set()

    async def flush_loop(self) -> None:
        interval = self.config.flush_interval_ms / 1000
        next_at = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_at):
                await self.flush_wanted.wait()
            self.flush_wanted = trio.Event()
            # start to start: a flush that takes a while does not stretch the period
            next_at = trio.current_time() + interval
            try:
                await self.flush()
            except Exception:
                log.exception("flush failed")
                await trio.sleep(min(interval, 1))

    async def flush(self, table: str | None = None) -> dict[str, Any]:
        """Commit what is buffered (one table or all); returns snapshots and watermarks."""
        async with self.flush_lock:
            start = time.perf_counter()
            plan = self.plan_cut()
            cut = plan.lsn
            taken = self.buffers.take(table.lower() if table else None, cut)
            results: dict[str, TableFlush] = {}
            try:
                for name, entries in taken.items():
                    try:
                        res = await trio.to_thread.run_sync(
                            self.writer.flush_table, name, entries, cut
                        )
                        self.table_errors.pop(name, None)
                        self._note_committed(entries)
                    except Exception as exc:
                        log.exception("table flush failed; changes kept", extra={"table": name})
                        self.metrics.flush_errors.inc()
                        self.table_errors[name] = f"{type(exc).__name__}: {exc}"
                        self.buffers.restore(name, entries)
                        res = TableFlush(name, error=self.table_errors[name])
                    results[name] = res
                    for _ in range(res.files_written):
                        self.metrics.parquet_file_size.observe(
                            res.bytes_written / max(res.files_written, 1)
                        )
            finally:
                self.buffers.done(taken)
            self._prune_committed_parts()
            self.awaited = plan.awaited
            self.held_back = {
                g: {
                    "parts": list(tx.parts),
                    "commit_ts": tx.commit_ts,
                    "have": sorted(tx.first_lsn),
                }
                for g, tx in itertools.islice(plan.held.items(), 100)  # /status stays small
            }
            committed = await self._advance(cut)
            elapsed = (time.perf_counter() - start) * 1000
            if taken:
                self.metrics.flush_duration.observe(elapsed / 1000)
                if any(r.error is None for r in results.values()):
                    self.last_commit_at = time.time()
            self.update_gauges()
            info = {
                "tables": {
                    n: {
                        "mirror_snapshot": r.mirror_snapshot,
                        "changelog_snapshot": r.changelog_snapshot,
                        "changelog_rows": r.changelog_rows,
                        "mirror_upserts": r.mirror_upserts,
                        "mirror_deletes": r.mirror_deletes,
                        "files_rewritten": r.files_rewritten,
                        "files_written": r.files_written,
                        "delete_files_written": r.delete_files_written,
                        "error": r.error,
                    }
                    for n, r in results.items()
                },
                "watermarks": committed,
                "duration_ms": round(elapsed, 1),
            }
            if taken:
                self.last_flush = {"at": time.time(), **info}
            errors = {n: r.error for n, r in results.items() if r.error}
            if errors:
                info["errors"] = errors
            return info

    # ------------------------------------------------------------------ maintenance

    async def expire(self, dry_run: bool = False) -> dict[str, Any]:
        """Expire snapshots outside the retention window now (dolake/maintenance.py);
        under the flush lock, so no commit is in flight."""
        async with self.flush_lock:
            start = time.perf_counter()
            try:
                tables = await trio.to_thread.run_sync(
                    lambda: self.writer.expire(
                        self.retention, dry_run=dry_run, progress=self._progress("expire")
                    )
                )
            finally:
                self.running = None
            elapsed = (time.perf_counter() - start) * 1000
            info = {
                "at": time.time(),
                "dry_run": dry_run,
                "duration_ms": round(elapsed, 1),
                "retention_ms": self.retention.retention_ms,
                "min_snapshots_to_keep": self.retention.min_snapshots,
                "tables": tables,
            }
            if not dry_run:
                expired = sum(
                    side.get("snapshots_expired", 0) for t in tables.values() for side in t.values()
                )
                deleted = sum(
                    side.get("files_deleted", 0) for t in tables.values() for side in t.values()
                )
                self.metrics.expired_snapshots.inc(expired)
                self.metrics.expired_files.inc(deleted)
                self.metrics.expire_duration.observe(elapsed / 1000)
                self.last_expiry = info
            self.update_gauges()
            return info

    async def compact(self, table: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Compact small files now (dolake/compaction.py); each table under the flush
        lock, so no flush commit is in flight and none is lost (flushes wait, batches
        are still acknowledged into the buffer), and a flush can run between two
        tables' compactions."""
        start = time.perf_counter()
        names = [table] if table is not None else sorted(self.writer.tables)
        tables: dict[str, Any] = {}
        note = self._progress("compact")
        try:
            for i, name in enumerate(names):
                async with self.flush_lock:
                    note(name, i, len(names))
                    tables.update(
                        await trio.to_thread.run_sync(
                            lambda name=name: self.writer.compact(
                                self.compaction, table=name, dry_run=dry_run
                            )
                        )
                    )
        finally:
            self.running = None
        elapsed = (time.perf_counter() - start) * 1000
        info = {
            "at": time.time(),
            "dry_run": dry_run,
            "duration_ms": round(elapsed, 1),
            "policy": {
                "min_files_threshold": self.compaction.min_files,
                "target_file_size_bytes": self.compaction.target_file_size,
                "max_files_per_compaction": self.compaction.max_files,
                "min_partition_age_ms": self.compaction.min_age_ms,
            },
            "tables": tables,
        }
        if not dry_run:
            m = self.metrics
            for sides in tables.values():
                for side in sides.values():
                    if side.get("snapshot_id") is None:
                        continue
                    m.compactions.inc()
                    m.compaction_files.inc(
                        side["data_files_rewritten"] + side["delete_files_rewritten"]
                    )
                    m.compaction_duration.observe(side.get("duration_ms", 0) / 1000)
                    for size in side.get("file_sizes", ()):
                        m.parquet_file_size.observe(size)
            self.last_compaction = info
        self.update_gauges()
        return info

    async def clean_orphans(
        self, dry_run: bool = False, older_than_ms: int | None = None
    ) -> dict[str, Any]:
        """Delete unreferenced files older than the safety window (dolake/orphans.py);
        under the flush lock, so no file a commit of this writer is about to
        reference is touched."""
        window = self.config.orphan_min_age_ms if older_than_ms is None else older_than_ms
        async with self.flush_lock:
            start = time.perf_counter()
            try:
                tables = await trio.to_thread.run_sync(
                    lambda: self.writer.clean_orphans(
                        window, dry_run=dry_run, progress=self._progress("clean-orphans")
                    )
                )
            finally:
                self.running = None
            info = {
                "at": time.time(),
                "dry_run": dry_run,
                "older_than_ms": window,
                "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                "tables": tables,
            }
            if not dry_run:
                deleted = sum(s["files_deleted"] for t in tables.values() for s in t.values())
                self.metrics.orphan_files.inc(deleted)
                self.last_orphan_cleanup = info
            return info

    async def _every(self, interval_ms: int, what: str, run: Any) -> None:
        """``run()`` every ``interval_ms`` (0 or less: never); a failure is logged and
        counted, and the next round comes as usual."""
        if interval_ms <= 0:
            return
        while True:
            await trio.sleep(interval_ms / 1000)
            try:
                await run()
            except Exception:
                log.exception(f"{what} failed")
                self.metrics.maintenance_errors.inc()

    async def _expire_and_clean(self) -> None:
        await self.expire()
        await self.clean_orphans()

    async def maintenance_loop(self) -> None:
        """Expiry, then orphan cleanup, every ``expire_interval_ms``."""
        await self._every(
            self.config.expire_interval_ms,
            "snapshot expiry or orphan cleanup",
            self._expire_and_clean,
        )

    async def compaction_loop(self) -> None:
        """Compaction every ``compaction_interval_ms`` (0: only on request)."""
        await self._every(self.config.compaction_interval_ms, "compaction", self.compact)

    def maintenance_status(self) -> dict[str, Any]:
        """GET /maintenance: the retention policy and the last expiry."""
        return {
            "service": "lake",
            "snapshot_retention_ms": self.retention.retention_ms,
            "min_snapshots_to_keep": self.retention.min_snapshots,
            "expire_interval_ms": self.config.expire_interval_ms,
            "last_expiry": _plain(self.last_expiry),
            **self._maintenance_extra(),
            "tables": _plain(self.writer.stats()),
        }

    def _progress(self, operation: str):
        """A progress callback recording where ``operation`` is, in ``self.running``."""
        started = time.time()

        def note(table: str, done: int, total: int) -> None:
            self.running = {
                "operation": operation,
                "table": table,
                "done": done,
                "total": total,
                "started_at": started,
            }

        return note

    def _maintenance_extra(self) -> dict[str, Any]:
        """Compaction and orphan cleanup: settings and last runs (/status, /maintenance)."""
        return {
            "compaction_interval_ms": self.config.compaction_interval_ms,
            "min_files_threshold": self.compaction.min_files,
            "target_file_size_bytes": self.compaction.target_file_size,
            "max_files_per_compaction": self.compaction.max_files,
            "min_partition_age_ms": self.compaction.min_age_ms,
            "orphan_min_age_ms": self.config.orphan_min_age_ms,
            "last_compaction": _plain(self.last_compaction),
            "last_orphan_cleanup": _plain(self.last_orphan_cleanup),
            "running": _plain(self.running),
        }

    def plan_cut(self) -> distributed.Cut:
        """Where this flush cuts each shard's stream: no distributed transaction
        half in (see dolake/distributed.py)."""
        received = {s.shard: s.received for s in self.sources.values()}
        txs = distributed.collect(self.buffers.entries())
        if not txs:
            return distributed.Cut(received, {}, set())
        return distributed.plan_cut(
            received, txs, committed_parts=self.committed_parts, safe_ts=self._safe_ts()
        )

    def _safe_ts(self) -> dict[str, int]:
        """Per shard: every change committed before this time is in the lake -- the
        commit time of its oldest buffered change, or of the last one received
        (commit times never decrease along a shard's LSNs)."""
        oldest = self.buffers.oldest_commit_ts()
        out: dict[str, int] = {}
        for shard, source in self.sources.items():
            now = oldest.get(shard, source.received_ts)
            out[shard] = max(source.safe_ts, now)
        return out

    def _note_committed(self, entries: list[Any]) -> None:
        for e in entries:
            ch = e.change
            if ch.gtid is not None and distributed.participants(ch.parts):
                self.committed_parts.setdefault(ch.gtid, set()).add(e.shard)

    def _prune_committed_parts(self) -> None:
        if not self.committed_parts:
            return
        buffered = {e.change.gtid for e in self.buffers.entries() if e.change.gtid}
        for gtid in [g for g in self.committed_parts if g not in buffered]:
            del self.committed_parts[gtid]

    async def _advance(self, cut: dict[str, int]) -> dict[str, int]:
        """Move each shard's committed watermark to just below its oldest
        still-buffered change, persist, and announce it to the shard."""
        moved: dict[str, int] = {}
        safe_moved: dict[str, int] = {}
        safe = self._safe_ts()
        for shard, source in self.sources.items():
            low = self.buffers.min_lsn(shard)
            mark = min(source.received, low - 1) if low is not None else source.received
            if mark > source.committed:
                source.committed = mark
                moved[shard] = mark
            if low is None:
                source.oldest_pending_at = None
            if safe.get(shard, 0) > source.safe_ts:
                source.safe_ts = safe_moved[shard] = safe[shard]
        if moved or safe_moved:
            await trio.to_thread.run_sync(self.writer.save_committed, moved, safe_moved)
            for shard in moved:
                session = self.sources[shard].session
                if session is not None:
                    with trio.move_on_after(5):  # a peer that does not read never stalls flushes
                        await session.announce(self.sources[shard].committed)
        return {s.shard: s.committed for s in self.sources.values()}

    # ------------------------------------------------------------------ "/" protocol

    async def handler(self, conn: ServerConnection) -> None:
        if getattr(conn, "path", "/") == SUBSCRIBE_PATH:  # before /cdc: it needs read scope only
            await handle_subscriber(conn, ctx=self.subscribe_ctx)
            return
        if getattr(conn, "path", "/").startswith("/cdc"):
            if getattr(conn, "scope", "admin") != "admin":
                await conn.send(
                    protocol.encode(
                        protocol.Error.from_exception(
                            None,
                            AuthorizationError(
                                "the CDC port needs an admin token", code="PERMISSION_DENIED"
                            ),
                        )
                    )
                )
                await conn.aclose()
                return
            await Session(self, conn).run()
            return
        await self.control(conn)

    async def control(self, conn: ServerConnection) -> None:
        try:
            async for frame in conn:
                try:
                    msg = protocol.decode(frame)
                except ValidationError as exc:
                    await conn.send(protocol.encode(protocol.Error.from_exception(None, exc)))
                    continue
                try:
                    reply = await self.request(conn, msg)
                except DoSQLError as exc:
                    reply = protocol.Error.from_exception(getattr(msg, "id", None), exc)
                except Exception as exc:  # e.g. the catalog is unreachable
                    log.exception("request failed")
                    reply = protocol.Error.from_exception(
                        getattr(msg, "id", None),
                        StorageError(f"lake writer failed: {type(exc).__name__}: {exc}"),
                    )
                await conn.send(protocol.encode(reply))
        except ConnectionClosed:
            pass

    async def request(self, conn: ServerConnection, msg: Any) -> protocol.Message:
        if isinstance(msg, protocol.Ping):
            return protocol.Ok(id=msg.id)
        if isinstance(msg, protocol.Flush):
            if getattr(conn, "scope", "admin") != "admin":
                raise AuthorizationError("flush needs an admin token", code="PERMISSION_DENIED")
            if not msg.wait:
                self.request_flush()
                return protocol.Ok(id=msg.id, info={"requested": True})
            info = await self.flush(msg.table)
            return protocol.Ok(id=msg.id, info=_plain(info))
        if isinstance(msg, protocol.Expire):
            if getattr(conn, "scope", "admin") != "admin":
                raise AuthorizationError("expire needs an admin token", code="PERMISSION_DENIED")
            info = await self.expire(dry_run=msg.dry_run)
            return protocol.Ok(id=msg.id, info=_plain(info))
        if isinstance(msg, protocol.Compact):
            if getattr(conn, "scope", "admin") != "admin":
                raise AuthorizationError("compact needs an admin token", code="PERMISSION_DENIED")
            info = await self.compact(msg.table, dry_run=msg.dry_run)
            return protocol.Ok(id=msg.id, info=_plain(info))
        if isinstance(msg, protocol.CleanOrphans):
            if getattr(conn, "scope", "admin") != "admin":
                raise AuthorizationError(
                    "clean-orphans needs an admin token", code="PERMISSION_DENIED"
                )
            if msg.older_than_ms is not None and msg.older_than_ms < 0:
                raise ValidationError("older_than_ms must be >= 0", code="INVALID_INPUT")
            info = await self.clean_orphans(msg.dry_run, msg.older_than_ms)
            return protocol.Ok(id=msg.id, info=_plain(info))
        raise ValidationError(
            f"{type(msg).__name__} is not served by the lake writer; send flush, expire, "
            "compact, clean_orphans or ping",
            code="INVALID_MESSAGE",
        )

    # ------------------------------------------------------------------ observability

    def update_gauges(self) -> None:
        m = self.metrics
        m.buffer_bytes.set(self.buffers.bytes + self.buffers.in_flight)
        m.buffer_events.set(self.buffers.events)
        m.connected.set(sum(1 for s in self.sources.values() if s.session is not None))
        now = time.time()
        if self.last_commit_at is not None:
            m.snapshot_lag.set(now - self.last_commit_at)
        for s in self.sources.values():
            m.source_lag_lsn.labels(s.shard).set(s.received - s.committed)
            lag = now - s.oldest_pending_at if s.oldest_pending_at else 0
            m.source_lag.labels(s.shard).set(lag)
        for name, sides in self.writer.stats().items():
            for side, st in sides.items():
                ident = name if side == "mirror" else f"{name}__changelog"
                m.table_data_files.labels(ident).set(st["data_files"])
                m.table_delete_files.labels(ident).set(st["delete_files"])
                m.table_snapshots.labels(ident).set(st["snapshots"])
                m.table_avg_file_size.labels(ident).set(st["avg_file_size_bytes"])
                last = st["last_compaction_ms"]
                m.table_last_compaction.labels(ident).set(last / 1000 if last else 0)
                m.table_last_compaction_duration.labels(ident).set(
                    (st["last_compaction_duration_ms"] or 0) / 1000
                )
                oldest = st["oldest_snapshot_ms"]
                m.table_oldest_snapshot.labels(ident).set(oldest / 1000 if oldest else 0)

    def status(self) -> dict[str, Any]:
        self.update_gauges()
        tables = {}
        stats = self.writer.stats()
        for name, lt in self.writer.tables.items():
            ms = lt.mirror.current_snapshot() if lt.mirror else None
            cs = lt.changelog.current_snapshot() if lt.changelog else None
            tables[name] = {
                "mirror_snapshot": ms.snapshot_id if ms else None,
                "changelog_snapshot": cs.snapshot_id if cs else None,
                "mirror_watermarks": lt.mirror_wm,
                "changelog_watermarks": lt.changelog_wm,
                "committed_at": lt.committed_at,
                "error": self.table_errors.get(name),
                # the mirror's data_files, delete_files, records, snapshots,
                # oldest_snapshot_ms; the same of the change log under "changelog"
                **stats[name]["mirror"],
                "changelog": stats[name]["changelog"],
            }
        props = catalog_properties(self.config, self.data_dir)
        return {
            "status": "degraded" if self.table_errors or self.refused() else "ok",
            "catalog": {"name": self.config.catalog_name, "uri": props["uri"]},
            "warehouse": props["warehouse"],
            "namespace": self.config.namespace,
            # reference table -> the shard whose changes feed its mirror
            "reference_tables": dict(self.writer.reference_tables),
            "sources": {
                s.shard: {
                    "connected": s.session is not None,
                    "committed_lsn": s.committed,
                    "received_lsn": s.received,
                    "current_lsn": s.current_lsn,
                    "oldest_lsn": s.oldest_lsn,
                    "last_batch_at": s.last_batch_at,
                    "incarnation": s.incarnation or None,
                    # set while the shard is refused (SHARD_IDENTITY_MISMATCH / _LSN_BEHIND)
                    "refused": s.refused,
                }
                for s in self.sources.values()
            },
            "buffers": {
                "tables": self.buffers.status(),
                "bytes": self.buffers.bytes,
                "in_flight_bytes": self.buffers.in_flight,
                "events": self.buffers.events,
                "max_bytes": self.config.max_buffer_size,
            },
            "tables": tables,
            "errors": dict(self.table_errors),
            "last_flush": self.last_flush,
            # distributed transactions the last flush held back: gtid -> parts, what is here
            "held_back_transactions": dict(self.held_back),
            "maintenance": {
                "snapshot_retention_ms": self.retention.retention_ms,
                "min_snapshots_to_keep": self.retention.min_snapshots,
                "expire_interval_ms": self.config.expire_interval_ms,
                "last_expiry": self.last_expiry,
                **self._maintenance_extra(),
            },
        }

    async def deep_health(self) -> dict[str, Any]:
        try:
            with trio.fail_after(10):
                await trio.to_thread.run_sync(self.writer.ping)
        except Exception as exc:
            return {"status": "error", "catalog": f"unreachable: {exc}"}
        refused = self.refused()
        if refused:
            # the lake works, but these shards' changes reach it no more: an operator must act
            return {"status": "degraded", "catalog": "ok", "refused_shards": refused}
        return {"status": "ok", "catalog": "ok"}

    def refused(self) -> dict[str, dict[str, Any]]:
        """Shards whose last hello was refused (identity or LSN went backwards)."""
        return {s.shard: dict(s.refused) for s in self.sources.values() if s.refused}

    # ------------------------------------------------------------------ run

    async def stop_on_signal(self, scope: trio.CancelScope) -> None:
        """SIGTERM/SIGINT: commit what is buffered (bounded wait), then exit.
        Nothing depends on it -- shards keep every uncommitted change -- it
        only saves them a resend."""
        import signal

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                with trio.move_on_after(30):
                    try:
                        await self.flush()
                    except Exception:
                        log.exception("final flush failed")
                scope.cancel()
                return

    async def serve(self, host: str, port: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.flush_loop)
            nursery.start_soon(self.maintenance_loop)
            nursery.start_soon(self.compaction_loop)
            nursery.start_soon(self.stop_on_signal, nursery.cancel_scope)
            await nursery.start(
                lambda task_status: self.service.serve(
                    self.handler,
                    host,
                    port,
                    max_size=256 * 1024 * 1024,
                    task_status=task_status,
                )
            )


def _x(shard: str) -> dict[str, str]:
    return {"shard": shard}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
