"""What the router logs about requests (issue 18): failures at info with the
trace id, which the client's error carries too; slow queries at warn; a
malformed request once per connection; a hostile statement without a
traceback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dosql
from dosql.cluster import LocalCluster
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, write_config

SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
    "SELECT count(*) FROM c"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("request-logs")
    extra = {"log_level": "info", "router": {"slow_query_ms": 100}}
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema(), extra=extra)
    with LocalCluster(cfg, tmp / "data", lake=False) as c, Client(c.url) as setup:
        setup.execute("CREATE TABLE users (id INTEGER, tenant_id INTEGER NOT NULL, name TEXT)")
        yield c


def _log_lines(cluster: LocalCluster, wait_for: str) -> list[dict[str, Any]]:
    path: Path = cluster.data_dir / "logs" / "router.log"
    deadline = time.monotonic() + 10
    while True:
        lines = []
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and "msg" in entry:
                lines.append(entry)
        if any(wait_for in json.dumps(e) for e in lines) or time.monotonic() > deadline:
            return lines


def test_a_failed_request_is_logged_with_the_trace_id_the_client_gets(
    cluster: LocalCluster,
) -> None:
    conn = dosql.connect(cluster.url, autocommit=True)
    try:
        with pytest.raises(dosql.ProgrammingError) as info:
            conn.cursor().execute("SELECT * FROM no_such_table_here")
    finally:
        conn.close()
    trace = info.value.trace_id
    assert trace, "the error names the request's trace id"
    lines = _log_lines(cluster, trace)
    failed = [e for e in lines if e.get("trace_id") == trace]
    assert failed and failed[0]["msg"] == "request failed", lines[-5:]
    assert failed[0]["level"] == "info" and failed[0]["code"] == info.value.code
    assert "no_such_table_here" in failed[0]["sql"] and "exc" not in failed[0]


def test_slow_queries_are_logged_and_counted(cluster: LocalCluster) -> None:
    conn = dosql.connect(cluster.url, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(SLOW)
        assert cur.fetchall() == [(3000000,)]
    finally:
        conn.close()
    slow = [e for e in _log_lines(cluster, "slow query") if e["msg"] == "slow query"]
    assert slow and slow[-1]["level"] == "warning" and slow[-1]["ms"] > 100
    assert slow[-1]["sql"].startswith("WITH RECURSIVE") and slow[-1].get("trace_id")


def test_malformed_requests_are_logged_once_per_connection(cluster: LocalCluster) -> None:
    before = sum(1 for e in _log_lines(cluster, "") if e["msg"] == "malformed request")
    with Client(cluster.url) as c:
        for i in range(50):
            c.ws.send(b"\x81\xa3bad" + bytes([i]))
            reply = c.ws.recv(timeout=10)
            assert b"INVALID_MESSAGE" in reply
        assert c.execute("SELECT 1").rows == [[1]]  # the connection still works
    after = sum(1 for e in _log_lines(cluster, "") if e["msg"] == "malformed request")
    assert after - before == 1


def test_a_deeply_nested_statement_leaves_no_traceback(cluster: LocalCluster) -> None:
    sql = "SELECT " + "(" * 20000 + "1" + ")" * 20000
    with Client(cluster.url) as c:
        with pytest.raises(dosql.errors.DoSQLError) as info:
            c.execute(sql)
        assert info.value.code in ("NOT_SUPPORTED", "SYNTAX_ERROR", "QUERY_ERROR")
        assert c.execute("SELECT 2").rows == [[2]]
    lines = _log_lines(cluster, "nested")
    assert not [e for e in lines if "exc" in e], [e["msg"] for e in lines if "exc" in e]
    path = cluster.data_dir / "logs" / "router.log"
    assert path.stat().st_size < 200_000


def test_a_lost_shard_is_logged_once_and_its_return_too(cluster: LocalCluster) -> None:
    cluster.kill_shard("shard-2")
    conn = dosql.connect(cluster.url, autocommit=True)
    try:
        for _ in range(5):
            with pytest.raises(dosql.Error):
                conn.cursor().execute("SELECT count(*) FROM users")
        cluster.start_shard("shard-2")
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM users")
        assert cur.fetchall() == [(0,)]
    finally:
        conn.close()
    lines = _log_lines(cluster, "shard reachable again")
    lost = [e for e in lines if e["msg"] == "shard unreachable" and e.get("shard") == "shard-2"]
    back = [e for e in lines if e["msg"] == "shard reachable again" and e.get("shard") == "shard-2"]
    assert len(lost) == 1 and lost[0]["level"] == "warning", lost
    assert len(back) == 1
