"""The change stream served by the lake writer itself, read by a plain websockets client.

This is the README example: no helper library, just JSON over a WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

import dosql
from dosql.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "dosql.toml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(QUICKSTART, tmp_path_factory.mktemp("sub-lake"), lake=True) as running:
        yield running


def _row_events(url: str, request: dict, count: int) -> list[dict]:
    events: list[dict] = []
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps(request))
        while len(events) < count:
            event = json.loads(ws.recv(timeout=30))
            assert event.get("type") != "error", event
            if "op" in event:
                events.append(event)
    return events


def test_plain_websocket_client_follows_changes(cluster: LocalCluster) -> None:
    conn = dosql.connect(cluster.url)
    cur = conn.cursor()
    cur.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER, name TEXT)")
    cur.executemany("INSERT INTO users VALUES (?, ?, ?)", [(i, i % 4, f"u{i}") for i in range(10)])
    conn.commit()
    cur.execute("UPDATE users SET name = 'renamed' WHERE tenant_id = 1 AND id = 1")
    cur.execute("DELETE FROM users WHERE tenant_id = 2 AND id = 2")
    conn.commit()
    conn.close()

    url = cluster.lake_url + "/cdc/subscribe"
    events = _row_events(url, {"tables": ["users"], "start": "earliest"}, 12)
    assert sorted(e["op"] for e in events) == ["c"] * 10 + ["d", "u"]
    update = next(e for e in events if e["op"] == "u")
    assert update["before"]["name"] == "u1" and update["after"]["name"] == "renamed"
    delete = next(e for e in events if e["op"] == "d")
    assert delete["before"]["id"] == 2 and delete["after"] is None
    # per shard, strictly increasing LSNs
    by_shard: dict[str, list[int]] = {}
    for e in events:
        by_shard.setdefault(e["source"]["shard"], []).append(e["source"]["lsn"])
    assert all(lsns == sorted(set(lsns)) for lsns in by_shard.values())

    # resuming from the position of the 10th event delivers exactly the last two
    tail = _row_events(url, {"tables": ["users"], "start": {"position": events[9]["position"]}}, 2)
    assert sorted((e["source"]["shard"], e["source"]["lsn"]) for e in tail) == sorted(
        (e["source"]["shard"], e["source"]["lsn"]) for e in events[10:]
    )  # across shards there is no global order


def test_bad_subscribe_message_gets_typed_error(cluster: LocalCluster) -> None:
    with connect(cluster.lake_url + "/cdc/subscribe", open_timeout=10) as ws:
        ws.send("{not json")
        event = json.loads(ws.recv(timeout=10))
    assert event["type"] == "error" and event["code"] == "INVALID_INPUT"
