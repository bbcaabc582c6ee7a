"""A killed shard: queries that need it fail fast naming it; the rest keep working."""

from __future__ import annotations

import time

import pytest

import dosql
from dosql.cluster import LocalCluster
from dosql.errors import RPCError, TransactionAbortedError
from tests.router.client import Client, http_json
from tests.router.conftest import quickstart_vschema, write_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with Client(c.url) as cl:
            cl.execute("CREATE TABLE users (tenant_id INTEGER, name TEXT)")
            cl.executemany("INSERT INTO users VALUES (?, ?)", [[i, f"u{i}"] for i in range(40)])
        yield c


def key_on(cluster, shard_id, other=False):
    return next(
        i for i in range(40) if (cluster.vschema.shard_for("users", i) == shard_id) != other
    )


def test_killed_shard_fails_fast_and_comes_back(cluster):
    victim = "shard-2"
    dead_key, live_key = key_on(cluster, victim), key_on(cluster, victim, other=True)
    with Client(cluster.url) as cl:
        assert cl.rows("SELECT name FROM users WHERE tenant_id = ?", [dead_key]) == [
            (f"u{dead_key}",)
        ]
        cluster.kill_shard(victim)
        for sql, params in (
            ("SELECT name FROM users WHERE tenant_id = ?", [dead_key]),
            ("SELECT count(*) FROM users", []),
            ("INSERT INTO users VALUES (?, 'x')", [dead_key]),
        ):
            started = time.monotonic()
            with pytest.raises(RPCError) as info:
                cl.execute(sql, params)
            assert time.monotonic() - started < 3.0
            assert info.value.code == "SHARD_UNAVAILABLE"
            assert victim in info.value.message
        # queries that do not need the dead shard still work
        assert cl.rows("SELECT name FROM users WHERE tenant_id = ?", [live_key]) == [
            (f"u{live_key}",)
        ]
        cl.execute("INSERT INTO users VALUES (?, 'new')", [live_key])
        status, deep = http_json(cluster.url, "/health/deep")
        assert status == 503 and deep["shards"][victim]["status"] == "down"
        # the driver maps it to OperationalError naming the shard
        con = dosql.connect(cluster.url, autocommit=True)
        with pytest.raises(dosql.OperationalError) as dinfo:
            con.cursor().execute("SELECT * FROM users WHERE tenant_id = ?", (dead_key,))
        assert victim in str(dinfo.value)
        con.close()

        cluster.start_shard(victim)
        deadline = time.monotonic() + 10
        while True:  # reconnect on demand; at most one short backoff window
            try:
                got = cl.rows("SELECT name FROM users WHERE tenant_id = ?", [dead_key])
                break
            except RPCError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert got == [(f"u{dead_key}",)]
        assert cl.rows("SELECT count(*) FROM users") == [(41,)]
        status, deep = http_json(cluster.url, "/health/deep")
        assert status == 200


def test_a_shard_dying_before_commit_rolls_back_every_shard(cluster):
    """Regression: COMMIT used to commit shard-0 and then fail on the dead shard."""
    victim = "shard-3"
    first = key_on(cluster, "shard-0")
    doomed = key_on(cluster, victim)
    with Client(cluster.url) as cl:
        cl.begin()
        cl.execute("INSERT INTO users VALUES (?, 'tx-a')", [first])
        cl.execute("INSERT INTO users VALUES (?, 'tx-b')", [doomed])
        cluster.kill_shard(victim)
        with pytest.raises(RPCError) as info:
            cl.commit()
        assert info.value.details["committed"] == []
        assert info.value.details["failed_shard"] == victim
        assert info.value.details["transaction_rolled_back"] is True
        assert victim in info.value.message and "rolled back on every shard" in info.value.message
        cl.rollback()  # a failed COMMIT leaves the session aborted until ROLLBACK
        cluster.start_shard(victim)
        deadline = time.monotonic() + 10
        while True:
            try:
                names = cl.rows("SELECT name FROM users WHERE name LIKE 'tx-%' ORDER BY name")
                break
            except RPCError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert names == []  # atomic: neither shard kept its part


def test_reference_reads_survive_a_dead_shard(cluster):
    with Client(cluster.url) as cl:
        cl.execute("CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT)")
        cl.execute("INSERT INTO countries VALUES ('fr', 'France')")
        cluster.kill_shard("shard-0")
        try:
            for _ in range(3):
                assert cl.rows("SELECT name FROM countries") == [("France",)]
            with pytest.raises(RPCError):  # writes need every copy
                cl.execute("INSERT INTO countries VALUES ('jp', 'Japan')")
        finally:
            cluster.start_shard("shard-0")


def test_lost_shard_session_rolls_back_the_transaction(cluster):
    victim = "shard-1"
    a = key_on(cluster, "shard-2")
    b = key_on(cluster, victim)
    with Client(cluster.url) as cl:
        cl.begin()
        cl.execute("INSERT INTO users VALUES (?, 'lost-a')", [a])
        cl.execute("INSERT INTO users VALUES (?, 'lost-b')", [b])
        cluster.kill_shard(victim)
        try:
            with pytest.raises(RPCError) as info:
                cl.execute("UPDATE users SET name = 'lost-b2' WHERE tenant_id = ?", [b])
            assert info.value.details.get("transaction_rolled_back") is True
            assert "rolled back" in info.value.message
            with pytest.raises(TransactionAbortedError):  # refused until ROLLBACK
                cl.commit()
            assert cl.rollback().info["ended"] == "aborted"
            assert cl.rows("SELECT name FROM users WHERE tenant_id = ?", [a]) == [(f"u{a}",)]
        finally:
            cluster.start_shard(victim)
