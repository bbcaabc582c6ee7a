"""Issue 18: a shard that lost its database is refused by the lake, loudly, never resumed.

Real processes on loopback: a lake writer and one shard streaming to it. The
shard is killed (-9); a normal restart keeps streaming exactly as before; a
restart on a deleted database (a new incarnation at LSN 0) is refused with
``SHARD_IDENTITY_MISMATCH``: the lake's ``/status`` and ``/health/deep`` name
the shard, the shard's ``/status`` and ``/health/deep`` say it is refused,
its new rows do not reach the mirror, and it purges nothing. Restoring the
database from a backup is welcomed again.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dolake import readers

from .helpers import ROOT, Lake
from .test_shards import Shard, settle

pytestmark = pytest.mark.skipif(
    not (ROOT / "dosql" / "shard" / "server.py").exists(), reason="shard server not built yet"
)

CONFIG = """
[cdc]
batch_size = 40
batch_timeout_ms = 50
retry_delay_ms = 20

[lake]
flush_interval_ms = 600000

[vschema]
[[vschema.shards]]
id = "shard-0"
"""


def _http(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _port(shard: Shard) -> int:
    assert shard.ws is not None
    return int(shard.ws.remote_address[1])


def _insert(shard: Shard, first: int, n: int) -> None:
    for i in range(first, first + n):
        shard.sql("INSERT INTO t (id, v) VALUES (?, ?)", [i, f"row {i}"])


def _mirror_ids(lake: Lake) -> list[int]:
    return sorted(r["id"] for r in readers.scan(lake.catalog(), "t").to_pylist())


def _wait(what: str, check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def lake(tmp_path: Path):
    running = Lake(tmp_path, config=CONFIG).start()
    try:
        yield running
    finally:
        running.stop()


def test_a_normal_restart_keeps_streaming_and_a_lost_database_is_refused(
    lake: Lake, tmp_path: Path
) -> None:
    shard = Shard("shard-0", tmp_path, lake).start()
    try:
        shard.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        _insert(shard, 0, 30)
        settle(lake, [shard])
        _, st = _http(_port(shard), "/status")
        incarnation = st["identity"]["incarnation"]
        assert st["identity"]["shard"] == "shard-0" and len(incarnation) == 32
        _, ls = _http(lake.port, "/status")
        assert ls["sources"]["shard-0"]["incarnation"] == incarnation

        # kill -9 and restart on the same database: same identity, streams as before
        shard.kill()
        shard.start()
        _insert(shard, 30, 20)
        settle(lake, [shard])
        assert _mirror_ids(lake) == list(range(50))
        _, st = _http(_port(shard), "/status")
        assert st["identity"]["incarnation"] == incarnation
        assert st["cdc"]["state"] == "streaming" and st["cdc"]["refused"] is None
        code, deep = _http(lake.port, "/health/deep")
        assert code == 200 and deep["status"] == "ok"
        committed = lake.flush()["watermarks"]["shard-0"]

        # kill -9, lose the database (and its WAL, SHM, two-phase sidecars), restart
        shard.kill()
        backup = tmp_path / "backup"
        backup.mkdir()
        for path in tmp_path.glob("shard-0.db*"):
            shutil.copy2(path, backup / path.name)
            path.unlink()
        shard.start()
        shard.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        _insert(shard, 1000, 100)
        _, st = _http(_port(shard), "/status")
        assert st["identity"]["incarnation"] != incarnation

        refused = _wait(
            "the lake to refuse the shard",
            lambda: _http(lake.port, "/status")[1]["sources"]["shard-0"]["refused"],
        )
        assert refused["code"] == "SHARD_IDENTITY_MISMATCH"
        assert incarnation in refused["message"] and "Restore" in refused["message"]
        _, ls = _http(lake.port, "/status")
        assert ls["status"] == "degraded"
        assert ls["sources"]["shard-0"]["committed_lsn"] == committed  # not moved
        assert ls["sources"]["shard-0"]["incarnation"] == incarnation  # not adopted
        assert not ls["sources"]["shard-0"]["connected"]
        code, deep = _http(lake.port, "/health/deep")
        assert code != 200 and deep["status"] == "degraded"
        assert deep["refused_shards"]["shard-0"]["code"] == "SHARD_IDENTITY_MISMATCH"

        st = _wait(
            "the shard to report the refusal",
            lambda: (s := _http(_port(shard), "/status")[1])["cdc"]["refused"] and s,
        )
        assert st["cdc"]["state"] == "refused"
        assert st["cdc"]["refused"]["code"] == "SHARD_IDENTITY_MISMATCH"
        code, deep = _http(_port(shard), "/health/deep")
        assert code != 200 and deep["status"] == "degraded"

        # nothing of the new database reached the mirror, and the shard purged nothing
        lake.flush()
        assert _mirror_ids(lake) == list(range(50))
        assert st["oldest_lsn"] == 1 and st["current_lsn"] >= 100
        assert "SHARD REFUSED" in (tmp_path / "lake.log").read_text()
        assert "CDC REFUSED" in (tmp_path / "shard-0.log").read_text()

        # the way back: restore the database from its backup; the lake welcomes it again
        shard.kill()
        for path in tmp_path.glob("shard-0.db*"):
            path.unlink()
        for path in backup.iterdir():
            shutil.copy2(path, tmp_path / path.name)
        shard.start()
        _insert(shard, 50, 10)
        settle(lake, [shard])
        assert _mirror_ids(lake) == list(range(60))
        _, ls = _http(lake.port, "/status")
        assert ls["sources"]["shard-0"]["refused"] is None and ls["status"] == "ok"
        assert _http(lake.port, "/health/deep")[0] == 200
    finally:
        shard.kill()
