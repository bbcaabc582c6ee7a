"""Flow control: a slow subscriber is paused at the source (bounded memory) and catches up;
one that stays too far behind gets SUBSCRIBER_TOO_SLOW (with a position), never a gap."""

from __future__ import annotations

import time

import pytest

import dosql
from dosql.errors import CDCError

from .helpers import READ

PAYLOAD = 20_000
ROWS = 1500


@pytest.fixture(scope="module")
def blobs(env):
    con = env.connect()
    con.cursor().execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, payload BLOB)")
    con.close()
    return env


def write_rows(env, first: int, n: int) -> None:
    con = env.connect()
    cur = con.cursor()
    for start in range(first, first + n, 250):
        cur.executemany(
            "INSERT INTO blobs VALUES (?, ?)",
            [(i, i.to_bytes(4, "big") * (PAYLOAD // 4)) for i in range(start, start + 250)],
        )
    con.close()


def test_slow_subscriber_is_paused_and_catches_up(blobs):
    srv = blobs.server({"DOLAKE_SUBSCRIBE_QUEUE_SIZE": "20", "DOLAKE_SUBSCRIBE_READ_BATCH": "20"})
    with dosql.subscribe(srv.url, tables=["blobs"], token=READ, timeout=60) as sub:
        time.sleep(0.5)
        baseline = srv.rss_kb()
        write_rows(blobs, 0, ROWS)  # ~30 MB of changes while nobody reads
        time.sleep(1.0)
        peak = srv.rss_kb()
        ids = []
        for event in sub:
            if event.get("op") != "c":
                continue
            ids.append(event["after"]["id"])
            assert event["after"]["payload"] == event["after"]["id"].to_bytes(4, "big") * (
                PAYLOAD // 4
            )
            if len(ids) % 50 == 0:
                time.sleep(0.02)  # slower than the shard
                peak = max(peak, srv.rss_kb())
            if len(ids) == ROWS:
                break
    assert sorted(ids) == list(range(ROWS))
    grown_mb = (peak - baseline) / 1024
    print(f"RSS baseline {baseline} KB, peak {peak} KB")
    assert grown_mb < 25, f"subscribe server grew {grown_mb:.1f} MB for ~{ROWS * PAYLOAD >> 20} MB"


def test_too_slow_subscriber_is_told_and_disconnected(blobs):
    srv = blobs.server(
        {
            "DOLAKE_SUBSCRIBE_QUEUE_SIZE": "10",
            "DOLAKE_SUBSCRIBE_READ_BATCH": "10",
            "DOLAKE_SUBSCRIBE_MAX_LAG": "50",
            "DOLAKE_SUBSCRIBE_LAG_GRACE_S": "0.5",
        }
    )
    first = 10_000
    with dosql.subscribe(srv.url, tables=["blobs"], token=READ, timeout=60) as sub:
        time.sleep(0.3)
        write_rows(blobs, first, ROWS)
        time.sleep(3)  # not reading: far more than the socket buffers hold
        got = []
        with pytest.raises(CDCError) as info:
            for event in sub:
                if event.get("op") == "c":
                    got.append((event["source"]["shard"], event["after"]["id"]))
        assert info.value.code == "SUBSCRIBER_TOO_SLOW"
        assert "too slow" in info.value.message
        resume_at = sub.position
    assert 0 < len(got) < ROWS
    for shard in {s for s, _ in got}:  # per shard in order (ids grow with LSNs)
        ids = [i for s, i in got if s == shard]
        assert ids == sorted(ids)
    # resuming from the position in the error delivers exactly the rest
    rest = []
    with dosql.subscribe(
        blobs.sub.url, tables=["blobs"], start=resume_at, token=READ, timeout=30
    ) as sub:
        for event in sub:
            if event.get("op") == "c":
                rest.append((event["source"]["shard"], event["after"]["id"]))
            if len(got) + len(rest) >= ROWS:
                break
    every = got + rest
    assert sorted(i for _, i in every) == list(range(first, first + ROWS))  # no gap, no dup
    for shard in {s for s, _ in every}:  # and nothing skipped before the error
        ids = [i for s, i in every if s == shard]
        assert ids == sorted(ids)
