"""A VSchema edit that would move rows is refused (issue 18): no silent wrong answers.

Real shards and two router processes: the cluster's router on the original
VSchema, and a second one started on an edited copy (``users`` and
``orders`` re-sharded by a consistent hash instead of the hash). ``users``
holds rows: the edited router refuses every statement on it with
``PLACEMENT_CHANGED`` (and says so in ``/status`` and ``/health/deep``),
while the original router still answers exactly. ``orders`` is empty: the
edit is taken — and once the edited router has written rows there, the
original router, whose VSchema now disagrees with where they are, refuses
it in turn. Started on the original VSchema again, the second router serves
both tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dosql.cluster import LocalCluster, to_toml
from dosql.errors import DoSQLError
from tests.router.client import Client, http_json
from tests.router.conftest import quickstart_vschema, write_config

N_USERS = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("placement")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with Client(c.url) as cl:
            cl.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER, name TEXT)")
            cl.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant_id INTEGER, v TEXT)")
            for i in range(N_USERS):
                cl.execute("INSERT INTO users VALUES (?, ?, ?)", [i, i, f"u{i}"])
        yield c


def edited_config(cluster: LocalCluster, path: Path) -> Path:
    """The cluster's own config with users and orders sharded by a consistent hash."""
    data: dict[str, Any] = tomllib.loads(Path(cluster.cluster_config).read_text("utf-8"))
    for name in ("users", "orders"):
        data["vschema"]["tables"][name]["vindex"] = "consistent_hash"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


@contextmanager
def router(config: Path) -> Iterator[str]:
    """A router process on ``config``; yields its URL."""
    argv = [sys.executable, "-m", "dosql.router", "--config", str(config), "--port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = json.loads(proc.stdout.readline())["port"]  # type: ignore[union-attr]
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def error_of(url: str, sql: str) -> DoSQLError | None:
    """The error ``sql`` fails with through the router at ``url`` (None: it ran)."""
    try:
        with Client(url) as cl:
            cl.rows(sql)
    except DoSQLError as exc:
        return exc
    return None


def refused(url: str, sql: str) -> DoSQLError:
    exc = error_of(url, sql)
    assert exc is not None, f"{sql} ran"
    return exc


def wait_for(cond: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = cond()
            if got:
                return got
        except DoSQLError:
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def users_count(url: str) -> int:
    with Client(url) as cl:
        return sum(cl.rows("SELECT count(*) FROM users WHERE tenant_id = ?", [i])[0][0]
                   for i in range(N_USERS))  # fmt: skip


def test_an_edit_under_rows_is_refused_and_an_edit_of_an_empty_table_is_taken(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    assert users_count(cluster.url or "") == N_USERS  # routed by key: each row found
    with router(edited_config(cluster, tmp_path / "edited.toml")) as edited:
        for sql in ("SELECT count(*) FROM users", "INSERT INTO users VALUES (999, 1, 'x')"):
            exc = refused(edited, sql)
            assert exc.code == "PLACEMENT_CHANGED", exc
            assert "users" in exc.message and "consistent_hash" in exc.message
            assert "previous rule" in exc.message  # says how to go back
        _, status = http_json(edited, "/status")
        assert list(status["blocked_tables"]) == ["users"]
        code, deep = http_json(edited, "/health/deep")
        assert deep["status"] == "degraded" and deep["blocked_tables"] == ["users"], (code, deep)

        # orders was empty: the edit is taken, and rows go where the new rule says
        with Client(edited) as cl:
            for i in range(20):
                cl.execute("INSERT INTO orders VALUES (?, ?, ?)", [i, i, f"o{i}"])
            assert cl.rows("SELECT v FROM orders WHERE tenant_id = 7") == [("o7",)]
        # ... so now the original router is the one whose VSchema misplaces them
        first = cluster.url or ""
        exc = wait_for(lambda: error_of(first, "SELECT * FROM orders WHERE tenant_id = 7"))
        assert exc.code == "PLACEMENT_CHANGED", exc
        assert users_count(first) == N_USERS  # the original still answers users exactly

    # the second router on the original VSchema: users is served, orders (placed by the
    # edited rule) is refused there too until the VSchema that wrote it is back
    with router(Path(cluster.cluster_config)) as again:
        assert users_count(again) == N_USERS
        assert refused(again, "SELECT count(*) FROM orders").code == "PLACEMENT_CHANGED"
