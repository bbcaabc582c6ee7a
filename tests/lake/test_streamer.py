"""dosql.shard.streamer against a real lake writer, with an in-process change log."""

from __future__ import annotations

import logging

import trio

from dolake import readers
from dosql import config as config_mod
from dosql.shard import streamer

from .helpers import Lake, free_port
from .test_cdc import Workload, changelog_lsns, mirror


class MemoryLog:
    """The ChangeLog contract (read/current_lsn/oldest_lsn/release/wait_for_change)."""

    def __init__(self) -> None:
        self.changes: list = []
        self.released = 0
        self.oldest = 1

    def append(self, changes: list) -> None:
        self.changes += changes

    def read(self, from_lsn: int, limit: int) -> list:
        return [c for c in self.changes if c.lsn >= from_lsn][:limit]

    def current_lsn(self) -> int:
        return self.changes[-1].lsn if self.changes else 0

    def oldest_lsn(self) -> int:
        return self.oldest

    def release(self, through_lsn: int) -> None:
        self.released = max(self.released, through_lsn)
        self.changes = [c for c in self.changes if c.lsn > through_lsn]
        self.oldest = max(self.oldest, through_lsn + 1)

    async def wait_for_change(self, after_lsn: int) -> None:
        while self.current_lsn() <= after_lsn:
            await trio.sleep(0.01)


def cdc_config(**kw: int) -> config_mod.CDCConfig:
    base = {"batch_size": 25, "batch_timeout_ms": 200, "max_retry_count": 5, "retry_delay_ms": 20}
    return config_mod.CDCConfig(**{**base, **kw})


async def wait_released(log: MemoryLog, lsn: int, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while log.released < lsn:
            await trio.sleep(0.05)


async def test_streams_flushes_on_interval_and_releases(tmp_path):
    lake = Lake(tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "300"}).start()
    try:
        log, w = MemoryLog(), Workload(11)
        w.start()
        log.append(list(w.changes) + w.step(200))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: streamer.run(
                    log, shard_id="shard-0", lake_url=lake.url, cdc=cdc_config(), token=None
                )
            )
            await wait_released(log, w.lsn)
            # more changes while connected; the timer flush commits them
            log.append(w.step(100))
            await wait_released(log, w.lsn)
            nursery.cancel_scope.cancel()
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
        assert log.changes == []  # everything released
    finally:
        lake.stop()


async def test_backpressure_and_lake_restart_lose_nothing(tmp_path):
    port = free_port()
    env = {"DOLAKE_MAX_BUFFER_SIZE": "2048", "DOLAKE_FLUSH_INTERVAL_MS": "100"}
    lake = Lake(tmp_path, env=env).start(port=port)
    try:
        log, w = MemoryLog(), Workload(12)
        w.start()
        log.append(list(w.changes) + w.step(300))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: streamer.run(
                    log, shard_id="shard-0", lake_url=lake.url, cdc=cdc_config(), token=None
                )
            )
            with trio.fail_after(60):
                while log.released < 50:
                    await trio.sleep(0.02)
            _, metrics = lake.http("/metrics")
            # initialised at 0 from startup: not 0 means counted
            assert b'dolake_batch_nacks_total{reason="buffer_full"} ' in metrics
            assert b'dolake_batch_nacks_total{reason="buffer_full"} 0.0' not in metrics
            lake.kill()  # kill -9 the lake while the shard streams
            log.append(w.step(100))
            lake.start(port=port)
            await wait_released(log, w.lsn)
            nursery.cancel_scope.cancel()
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    finally:
        lake.kill()


async def test_data_loss_stops_streaming(tmp_path, caplog):
    lake = Lake(tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "600000"}).start()
    try:
        log, w = MemoryLog(), Workload(13)
        w.start()
        log.append(list(w.changes) + w.step(20))
        log.release(5)  # purged before the lake ever committed it
        with caplog.at_level(logging.ERROR), trio.fail_after(20):
            await streamer.run(
                log, shard_id="shard-0", lake_url=lake.url, cdc=cdc_config(), token=None
            )
        assert any("DATA LOSS" in r.getMessage() for r in caplog.records)
        info = await trio.to_thread.run_sync(lake.flush)
        assert info["tables"] == {}
        assert readers.open_catalog(lake.config_path).list_tables("default") == []
    finally:
        lake.stop()
