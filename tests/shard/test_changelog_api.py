"""The ChangeLog Python API the CDC streamer uses (in-process, against a real database)."""

from __future__ import annotations

from pathlib import Path

import trio

from dosql import config, protocol
from dosql.shard.executor import Shard


async def run_sql(shard: Shard, sql: str, params: list | None = None) -> None:
    state = await shard.acquire(read_only=False)
    try:
        outcome = await trio.to_thread.run_sync(
            lambda: shard.execute(state, sql, params, lambda _chunk: None, 1, autocommit=True)
        )
        if outcome.committed_lsn is not None:
            shard.changelog.committed(outcome.committed_lsn)  # from the trio thread
    finally:
        shard.release(state)


async def test_changelog_contract(tmp_path: Path) -> None:
    shard = await trio.to_thread.run_sync(
        Shard, "shard-x", str(tmp_path / "cl.db"), config.default(env={}).shard
    )
    cl = shard.changelog
    cl.bind()
    try:
        assert (cl.current_lsn(), cl.oldest_lsn()) == (0, 1)
        woke: list[int] = []

        async def waiter(after: int) -> None:
            await cl.wait_for_change(after)
            woke.append(cl.current_lsn())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, 0)
            nursery.start_soon(waiter, 2)
            await trio.sleep(0.05)
            assert woke == []
            await run_sql(shard, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            await trio.sleep(0.05)
            assert woke == [1]  # the second waiter needs LSN 3
            await run_sql(shard, "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        assert woke == [1, 3]
        await cl.wait_for_change(2)  # already satisfied: returns at once

        changes = await trio.to_thread.run_sync(cl.read, 1, 10)
        assert [c.lsn for c in changes] == [1, 2, 3]
        assert all(isinstance(c, protocol.Change) for c in changes)
        assert changes[1].after == {"id": 1, "v": "a"} and changes[1].txid == changes[2].txid
        assert [c.lsn for c in await trio.to_thread.run_sync(cl.read, 2, 1)] == [2]
        assert await trio.to_thread.run_sync(cl.read, 4, 10) == []

        await trio.to_thread.run_sync(cl.release, 2)
        assert (cl.current_lsn(), cl.oldest_lsn()) == (3, 3)
        assert [c.lsn for c in await trio.to_thread.run_sync(cl.read, 1, 10)] == [3]
        await trio.to_thread.run_sync(cl.release, 1)  # below the oldest: nothing to do
        await trio.to_thread.run_sync(cl.release, 100)  # clamped to current
        assert (cl.current_lsn(), cl.oldest_lsn()) == (3, 4)
        await run_sql(shard, "UPDATE t SET v = 'z' WHERE id = 2")
        after = await trio.to_thread.run_sync(cl.read, 1, 10)
        assert [(c.lsn, c.op) for c in after] == [(4, "update")]
        assert after[0].commit_ts >= changes[-1].commit_ts and after[0].txid > changes[-1].txid
    finally:
        await trio.to_thread.run_sync(shard.close)
