"""A shard whose storage goes read-only or full, then comes back (issue 18).

The faults are real, made by the kernel, not mocked: ``chattr +i`` on the
database and its WAL (the kernel refuses every write to them, to root too,
like a filesystem remounted read-only: SQLite sees EPERM where it would see
EROFS) and a small tmpfs filled with a ballast file (ENOSPC). A read-only
remount cannot be used while the shard holds the files open for writing
(EBUSY), and ext4's error-triggered read-only mode cannot be undone on this
kernel. Both tests need root (CAP_LINUX_IMMUTABLE, mount) and skip without it.

What is checked: a write fails with STORAGE_ERROR while storage is bad,
``/health/deep`` answers 503 naming the state, and once the storage is
writable again the next write succeeds without a restart and the health is
ok; the database file then holds exactly the committed rows and their
``_dosql_changes`` (nothing half-applied).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.shard.client import ShardClient, ShardProcess, expect_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chattr +i, mount)")


def deep_health(shard: ShardProcess) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{shard.port}/health/deep"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def consistent_rows(db: Path) -> tuple[list[int], list[int]]:
    """(ids in t, ids of t's logged inserts with their _dosql_tx row), read from the file."""
    conn = sqlite3.connect(db)
    try:
        rows = [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]
        keys = conn.execute(
            "SELECT c.key FROM _dosql_changes c JOIN _dosql_tx x ON x.txid = c.txid "
            "WHERE c.tbl = 't' AND c.op = 'insert' ORDER BY c.lsn"
        ).fetchall()
    finally:
        conn.close()
    return rows, [msgspec.msgpack.decode(k[0])[0] for k in keys]


def test_read_only_storage_is_reported_and_the_shard_recovers_alone(tmp_path: Path) -> None:
    db = tmp_path / "shard.db"
    shard = ShardProcess(db).start()
    locked: list[Path] = []
    try:
        with shard.client() as c:
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            c.execute("INSERT INTO t VALUES (1, 'before')")
            files = [db, Path(str(db) + "-wal")]
            try:
                chattr("+i", *files)
            except (OSError, subprocess.CalledProcessError) as exc:
                pytest.skip(f"chattr +i is not possible here: {exc}")
            locked = files
            # A pooled connection (opened before) fails with SQLITE_IOERR_WRITE...
            for i in range(2):
                expect_error(
                    lambda i=i: c.execute("INSERT INTO t VALUES (?, 'x')", [10 + i]),
                    "STORAGE_ERROR",
                )
            # ...and one opened now (c holds the pooled one) is read-only for good
            # (SQLITE_READONLY); released last, the pool would hand it out next.
            with shard.client() as c2:
                c.begin()
                c2.begin()
                c.rollback()
                expect_error(lambda: c2.execute("INSERT INTO t VALUES (12, 'x')"), "STORAGE_ERROR")
                c2.rollback()
            status, body = deep_health(shard)
            assert status == 503 and body["status"] == "degraded", body
            assert body["storage"]["state"] == "read_only", body
            assert body["storage"]["last_error"]["kind"] in ("io_error", "read_only")
            assert c.execute("SELECT count(*) FROM t").rows == [[1]]  # reads still work
            chattr("-i", *files)
            locked = []
            for i in range(3):  # no restart: every write works again, the first one too
                c.execute("INSERT INTO t VALUES (?, 'after')", [20 + i])
            status, body = deep_health(shard)
            assert status == 200 and body["status"] == "ok", body
            assert body["storage"]["state"] == "ok"
        assert shard.terminate() == 0
    finally:
        if locked:
            chattr("-i", *locked)
        shard.kill()
    rows, logged = consistent_rows(db)
    assert rows == [1, 20, 21, 22]
    assert logged == rows  # every committed row has its change, and nothing else


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write zeros until the filesystem has no space left."""
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)


def test_full_disk_is_reported_and_writes_resume_when_space_is_freed(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt", "4m") as mnt:
        db = mnt / "shard.db"
        env = {"DOSQL_MIN_FREE_BYTES": str(256 * 1024)}
        shard = ShardProcess(db, env=env).start()
        try:
            c: ShardClient
            with shard.client() as c:
                c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
                c.execute("INSERT INTO t VALUES (1, 'before')")
                assert deep_health(shard)[0] == 200
                fill(mnt / "ballast")
                big = "x" * 200_000
                expect_error(
                    lambda: c.execute("INSERT INTO t VALUES (2, ?)", [big]), "STORAGE_ERROR"
                )
                status, body = deep_health(shard)
                assert status == 503 and body["storage"]["state"] == "full", body
                assert body["storage"]["last_error"]["sqlite_error"] == "SQLITE_FULL"
                (mnt / "ballast").unlink()
                c.execute("INSERT INTO t VALUES (3, ?)", [big])
                c.execute("INSERT INTO t VALUES (4, 'small')")
                status, body = deep_health(shard)
                assert status == 200 and body["storage"]["state"] == "ok", body
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{shard.port}/metrics").read()
                assert b'dosql_storage_errors_total{kind="full"} 1.0' in metrics
                assert b'dosql_storage_state{state="ok"} 1.0' in metrics
            assert shard.terminate() == 0
        finally:
            shard.kill()
        rows, logged = consistent_rows(db)
        assert rows == [1, 3, 4]
        assert logged == rows


def test_a_prepared_transaction_survives_read_only_storage(tmp_path: Path) -> None:
    """Its connection is never recycled while it is prepared: the decision commits it later."""
    from dosql import protocol

    db = tmp_path / "shard.db"
    shard = ShardProcess(db).start()
    locked: list[Path] = []
    parts = ["shard-0", "shard-9"]
    try:
        with shard.client() as c:
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            c.begin("immediate")
            c.execute("INSERT INTO t VALUES (1, 'prepared')")
            c.request(protocol.Prepare(c.next_id(), "g1", parts))
            files = [db, Path(str(db) + "-wal")]
            try:
                chattr("+i", *files)
            except (OSError, subprocess.CalledProcessError) as exc:
                pytest.skip(f"chattr +i is not possible here: {exc}")
            locked = files
            decide = protocol.CommitPrepared(c.next_id(), "g1", 1, parts)
            expect_error(lambda: c.request(decide), "STORAGE_ERROR")
            assert deep_health(shard)[1]["storage"]["state"] == "read_only"
            chattr("-i", *files)
            locked = []
            c.request(protocol.CommitPrepared(c.next_id(), "g1", 1, parts))
            c.execute("INSERT INTO t VALUES (2, 'after')")
            assert deep_health(shard)[0] == 200
        assert shard.terminate() == 0
    finally:
        if locked:
            chattr("-i", *locked)
        shard.kill()
    rows, logged = consistent_rows(db)
    assert rows == [1, 2] and logged == rows
