"""StorageMonitor's rules, without a shard process (the process tests are test_storage_faults.py)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from dosql.shard import storage
from dosql.shard.storage import StorageMonitor, classify


def readonly_error(tmp_path: Path) -> sqlite3.Error:
    db = tmp_path / "x.db"
    sqlite3.connect(db).execute("CREATE TABLE IF NOT EXISTS t(x)").connection.close()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("a mode=ro connection wrote")


def test_errors_are_classified_by_sqlite_error_name(tmp_path: Path) -> None:
    assert classify(readonly_error(tmp_path)) == "read_only"
    assert classify(OSError(errno.ENOSPC, "full")) == "full"
    assert classify(OSError(errno.EROFS, "ro")) == "read_only"
    assert classify(sqlite3.IntegrityError("UNIQUE constraint failed")) is None


def test_a_storage_error_is_reported_until_a_commit_or_its_memory_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mon = StorageMonitor(str(tmp_path / "x.db"), min_free_bytes=0)
    assert mon.report()["state"] == "ok"
    mon.failed(readonly_error(tmp_path))
    report = mon.report()
    assert report["state"] == "read_only" and report["last_error"]["kind"] == "read_only"
    mon.write_ok()
    assert mon.report()["state"] == "ok"
    assert mon.report()["last_error"] is not None  # still shown, as history
    mon.failed(readonly_error(tmp_path))
    monkeypatch.setattr(storage, "ERROR_MEMORY_S", 0.0)
    assert mon.report()["state"] == "ok"  # an idle shard is not degraded for ever


def test_too_little_free_space_is_full(tmp_path: Path) -> None:
    mon = StorageMonitor(str(tmp_path / "x.db"), min_free_bytes=2**62)
    report = mon.report()
    assert report["state"] == "full" and report["free_bytes"] < 2**62
