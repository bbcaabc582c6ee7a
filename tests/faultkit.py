"""Shared by the two-phase-commit fault tests: the crash schedule and the cluster chores.

``SCHEDULE`` names every step of the commit protocol to SIGKILL a process at
(``DOSQL_CRASH_AT``, dosql/faults.py), on shards and on the router, plus a
plain kill mid-workload.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError
from tests.router.client import Client, http_json

SCHEDULE: list[tuple[str, str | None]] = [
    ("shard-1", "shard.prepare.after_record"),
    ("shard-2", "shard.commit_prepared.before"),
    ("shard-0", "shard.commit_prepared.after_commit"),
    ("router", "router.2pc.before_decision"),
    ("router", "router.2pc.after_decision"),
    ("shard-3", "shard.prepare.before_record"),
    ("shard-1", None),  # a plain SIGKILL mid-workload
]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def alive(cluster: LocalCluster, target: str) -> bool:
    return cluster.router_alive if target == "router" else cluster.shard_alive(target)


def restart_armed(cluster: LocalCluster, target: str, point: str | None) -> None:
    """Restart ``target`` (a shard id or "router") set to crash at ``point`` (None: no point)."""
    env = {"DOSQL_CRASH_AT": point} if point else None
    if target == "router":
        cluster.kill_router()
        cluster.start_router(env)
    else:
        cluster.kill_shard(target)
        cluster.start_shard(target, env)


def wait_until_dead(cluster: LocalCluster, target: str, point: str | None) -> None:
    """Until ``target`` reached its crash point; a plain-kill round kills it after a while."""
    if point is None:
        time.sleep(1.5)
        cluster.kill_shard(target)
    wait_for(lambda: not alive(cluster, target), 20, f"{target} to reach crash point {point}")


def ensure_all_up(cluster: LocalCluster) -> None:
    for shard_id in cluster.vschema.shard_ids:
        if not cluster.shard_alive(shard_id):
            cluster.start_shard(shard_id)
    if not cluster.router_alive:
        cluster.start_router()


def settled(cluster: LocalCluster) -> bool:
    """The router's resolver ran and no transaction is left prepared."""
    try:
        _, status = http_json(cluster.url, "/status")
    except OSError:
        return False
    tpc = status.get("two_phase_commit") or {}
    return tpc.get("last_pass") is not None and not tpc.get("prepared")


def readable(cluster: LocalCluster, tables: Iterable[str]) -> bool:
    """Every shard answers the router again for ``tables``."""
    try:
        with Client(cluster.url) as cl:
            for t in tables:
                cl.rows(f"SELECT count(*) FROM {t}")
        return True
    except (DoSQLError, OSError):
        return False
