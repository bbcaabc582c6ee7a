"""The shard process: open the database, serve the protocol, shut down cleanly.

On SIGTERM/SIGINT the server stops accepting, cancels the sessions (each
rolls back its open transaction), checkpoints the WAL and closes the
database, then returns (exit status 0). When a lake URL is configured the CDC
streamer (``dosql.shard.streamer``, imported only then) runs in the same
nursery and follows the change log.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
from pathlib import Path
from typing import Any

import trio
from websockets.trio.server import ServerConnection

from dosql.config import Config
from dosql.errors import StorageError
from dosql.ownership import OwnerLock
from dosql.service import Service
from dosql.shard.executor import Shard
from dosql.shard.metrics import ShardMetrics
from dosql.shard.session import Session

log = logging.getLogger(__name__)


def admin_token(config: Config) -> str | None:
    for token in config.tokens:
        if token.scope == "admin":
            return token.token
    return None


async def serve(
    config: Config,
    *,
    shard_id: str,
    db_path: str,
    host: str,
    port: int,
    lake_url: str | None = None,
) -> int:
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    # One process per database file: a second shard on it fails here, naming the first.
    owner = OwnerLock(db_path + ".lock", f"shard {shard_id}").acquire()
    try:
        shard = await trio.to_thread.run_sync(Shard, shard_id, db_path, config.shard)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(
            f"cannot open shard database {db_path}: {exc} (check the path and its permissions)",
            details={"db": db_path},
        ) from None
    shard.changelog.bind()
    metrics = ShardMetrics(shard)
    # the CDC streamer's state (dosql/shard/streamer.py), shown in /status and /health/deep
    cdc_status: Any = None
    if lake_url:
        from dosql.shard.streamer import StreamStatus

        cdc_status = StreamStatus()

    def status() -> dict[str, Any]:
        cl = shard.changelog
        db, wal = shard.storage_bytes()
        return {
            "shard": shard_id,
            # the database's durable identity (dosql/shard/identity.py)
            "identity": shard.identity.as_dict(),
            "db_path": str(Path(db_path).resolve()),
            "current_lsn": cl.current_lsn(),
            "oldest_lsn": cl.oldest_lsn(),
            "sessions": shard.sessions,
            "open_transactions": shard.open_transactions,
            "prepared_transactions": shard.twophase.listing(),  # two-phase commit, in doubt
            "db_bytes": db,
            "wal_bytes": wal,
            "lake_url": lake_url,
            "cdc": cdc_status.as_dict() if cdc_status is not None else None,
            # read_only / full / io_error, free space, last storage error (storage.py)
            "storage": shard.storage.report(),
        }

    async def deep_health() -> dict[str, Any]:
        try:
            with trio.fail_after(5):
                body = await trio.to_thread.run_sync(shard.health_check)
        except Exception as exc:
            return {"status": "error", "error": str(exc)}
        if cdc_status is not None and cdc_status.refused:
            # serving, but its changes reach no lake: an operator has to act
            body = {**body, "status": "degraded", "cdc": cdc_status.as_dict()}
        return body

    service = Service(
        "shard",
        tokens=config.tokens,
        registry=metrics.registry,
        status=status,
        deep_health=deep_health,
    )

    async def handler(ws: ServerConnection) -> None:
        scope = getattr(ws, "scope", "admin")
        await Session(shard, metrics, ws, scope).serve()

    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: service.serve(
                        handler,
                        host,
                        port,
                        max_size=config.shard.max_message_size,
                        task_status=task_status,
                    )
                )
                owner.describe(address=f"ws://{host}:{service.port}")
                if lake_url:
                    nursery.start_soon(run_streamer, shard, config, shard_id, lake_url, cdc_status)
                async for signum in signals:
                    log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                    nursery.cancel_scope.cancel()
                    break
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shard.close)
        owner.release()
        log.info("database closed", extra={"db": db_path})
    return 0


async def run_streamer(
    shard: Shard, config: Config, shard_id: str, lake_url: str, status: Any = None
) -> None:
    """Run the lake helper's CDC streamer (imported lazily: only shards with a lake need it).

    A streamer failure is logged and never takes the shard down: the change
    log keeps every change until the lake reports it committed, so CDC can
    catch up after a restart.
    """
    try:
        from dosql.shard import streamer

        await streamer.run(
            shard.changelog,
            shard_id=shard_id,
            lake_url=lake_url,
            cdc=config.cdc,
            token=admin_token(config),
            incarnation=shard.identity.incarnation,
            status=status,
        )
    except Exception:
        log.exception("CDC streamer stopped; the shard keeps serving", extra={"lake": lake_url})
