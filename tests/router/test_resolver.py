"""The router dies in the middle of a two-phase commit: its successor's resolver decides.

Deterministic crashes (``DOSQL_CRASH_AT`` on the router) before and after the
decision; a participant kept down shows the transaction in doubt in
``/status`` until it is back; ``dosql_transaction_status`` reports each
outcome.
"""

from __future__ import annotations

import time

import pytest

from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError
from tests.router.client import Client, http_json
from tests.router.conftest import quickstart_vschema, write_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resolver")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with Client(c.url) as cl:
            cl.execute("CREATE TABLE orders (tenant_id INTEGER PRIMARY KEY, v TEXT)")
        yield c


def keys_on_two_shards(cluster: LocalCluster) -> tuple[int, int, str, str]:
    a = 1
    sa = cluster.vschema.shard_for("orders", a)
    b = next(k for k in range(2, 100) if cluster.vschema.shard_for("orders", k) != sa)
    return a, b, sa, cluster.vschema.shard_for("orders", b)


def status(cluster: LocalCluster) -> dict:
    return http_json(cluster.url, "/status")[1]["two_phase_commit"]


def wait_for(cond, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = cond()
            if got:
                return got
        except (DoSQLError, OSError):
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def crash_router_during_commit(cluster: LocalCluster, point: str, a: int, b: int, v: str) -> str:
    cluster.kill_router()
    cluster.start_router({"DOSQL_CRASH_AT": point})
    cl = Client(cluster.url)
    gtid = cl.begin().info["gtid"]
    cl.execute("INSERT INTO orders VALUES (?, ?)", [a, v])
    cl.execute("INSERT INTO orders VALUES (?, ?)", [b, v])
    with pytest.raises(Exception):  # noqa: B017 - the router dies under the COMMIT
        cl.commit()
    wait_for(lambda: not cluster.router_alive)
    return gtid


def resolver_idle(cluster: LocalCluster) -> bool:
    """A whole resolver pass ran and found nothing prepared (before the first, nothing is listed)."""
    st = status(cluster)
    return st["last_pass"] is not None and not st["prepared"] and not st["in_doubt"]


def prepared_on_shards(cluster: LocalCluster, gtid: str) -> int:
    """How many shards hold ``gtid`` prepared (each shard's own /status)."""
    listed = [
        http_json(url, "/status")[1]["prepared_transactions"] for url in cluster.shard_urls.values()
    ]
    return sum(1 for entries in listed for e in entries if e["gtid"] == gtid)


def outcome(cluster: LocalCluster, gtid: str) -> str:
    with Client(cluster.url) as cl:
        return cl.rows("SELECT dosql_transaction_status(?)", [gtid])[0][0]


def rows(cluster: LocalCluster, a: int, b: int) -> list[tuple]:
    with Client(cluster.url) as cl:
        return cl.rows(
            "SELECT tenant_id, v FROM orders WHERE tenant_id IN (?, ?) ORDER BY tenant_id", [a, b]
        )


def test_router_dies_before_the_decision_resolved_as_aborted(cluster: LocalCluster) -> None:
    a, b, _, sb = keys_on_two_shards(cluster)
    gtid = crash_router_during_commit(cluster, "router.2pc.before_decision", a, b, "before")
    cluster.kill_shard(sb)  # one participant away: the other stays in doubt
    cluster.start_router()
    doubt = wait_for(lambda: status(cluster)["in_doubt"])
    assert doubt[0]["gtid"] == gtid and "unreachable" in doubt[0]["waiting_because"]
    assert outcome(cluster, gtid) == "in_doubt"
    cluster.start_shard(sb)
    wait_for(lambda: resolver_idle(cluster))
    assert outcome(cluster, gtid) == "aborted"
    assert wait_for(lambda: rows(cluster, a, b) == [] or None) is True
    assert status(cluster)["resolved"]["aborted"] >= 1


def keys_apart(cluster: LocalCluster, offset: int) -> tuple[int, int]:
    """Two fresh keys on two shards."""
    a, b, _, _ = keys_on_two_shards(cluster)
    a, b = a + offset, b + offset
    while cluster.vschema.shard_for("orders", a) == cluster.vschema.shard_for("orders", b):
        b += 1
    return a, b


def test_router_dies_after_the_decision_resolved_as_committed(cluster: LocalCluster) -> None:
    a, b = keys_apart(cluster, 100)
    gtid = crash_router_during_commit(cluster, "router.2pc.after_decision", a, b, "after")
    cluster.start_router()
    wait_for(lambda: resolver_idle(cluster) and status(cluster)["resolved"]["committed"] >= 1)
    assert rows(cluster, a, b) == [(a, "after"), (b, "after")]
    assert outcome(cluster, gtid) == "committed"


def test_committed_status_means_every_part_is_applied(cluster: LocalCluster) -> None:
    """Asked before any resolver pass, the status finishes the orphaned part itself: a read
    right after "committed" sees the whole transaction (it used to see the decider's part)."""
    a, b = keys_apart(cluster, 200)
    gtid = crash_router_during_commit(cluster, "router.2pc.after_decision", a, b, "asked")
    cluster.start_router({"DOSQL_RESOLVER_INTERVAL_MS": "600000"})  # no pass in this test
    try:
        assert prepared_on_shards(cluster, gtid) == 1  # the decider committed, one part waits
        assert wait_for(lambda: outcome(cluster, gtid)) == "committed"
        assert rows(cluster, a, b) == [(a, "asked"), (b, "asked")]
        assert status(cluster)["resolved"]["committed"] == 0
    finally:
        cluster.kill_router()
        cluster.start_router()
