"""A shard that goes away mid-stream: the subscriber is told (SHARD_UNAVAILABLE, with its
position) and, once the shard is back, resumes exactly where it stopped."""

from __future__ import annotations

import time

import pytest

import dosql
from dosql.errors import RPCError

from .helpers import READ


def insert(env, ids: range) -> None:
    deadline = time.monotonic() + 30
    for i in ids:
        while True:
            try:
                con = env.connect()
                con.cursor().execute("INSERT INTO downs VALUES (?, 'v')", (i,))
                con.close()
                break
            except Exception:  # the router may still see the restarted shard as down
                assert time.monotonic() < deadline
                time.sleep(0.2)


def test_shard_down_then_resume(env):
    con = env.connect()
    con.cursor().execute("CREATE TABLE downs (id INTEGER PRIMARY KEY, v TEXT)")
    con.close()
    insert(env, range(20))
    got: list[tuple[str, int]] = []
    with dosql.subscribe(
        env.sub.url, tables=["downs"], start="earliest", token=READ, timeout=30
    ) as sub:
        with pytest.raises(RPCError) as info:
            for event in sub:
                if event.get("op") == "c":
                    got.append((event["source"]["shard"], event["after"]["id"]))
                    if len(got) == 20:
                        env.cluster.kill_shard("shard-1")
        assert info.value.code == "SHARD_UNAVAILABLE" and "shard-1" in info.value.message
        resume_at = sub.position
    env.cluster.start_shard("shard-1")
    insert(env, range(20, 40))
    with dosql.subscribe(
        env.sub.url, tables=["downs"], start=resume_at, token=READ, timeout=30
    ) as sub:
        for event in sub:
            if event.get("op") == "c":
                got.append((event["source"]["shard"], event["after"]["id"]))
            if len(got) >= 40:
                break
    assert sorted(i for _, i in got) == list(range(40))  # nothing lost, nothing twice
