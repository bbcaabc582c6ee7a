"""The Debezium format of the stream against a real cluster (router, 3 shards, lake writer,
subscribe server over WebSocket), checked field by field against Debezium's documented
events, and parsed with the rules of Flink's ``debezium-json`` format.

Debezium's documented examples (change event value with transaction metadata, and the
transaction BEGIN/END events), as the PostgreSQL/Db2/MongoDB connector guides show them::

    {"before": null, "after": {"pk": "2", "aa": "1"}, "source": {...}, "op": "c",
     "ts_ms": "1580390884335",
     "transaction": {"id": "571", "total_order": "1", "data_collection_order": "1"}}
    {"status": "BEGIN", "id": "571", "event_count": null, "data_collections": null}
    {"status": "END", "id": "571", "event_count": 2,
     "data_collections": [{"data_collection": "s1.a", "event_count": 1},
                          {"data_collection": "s2.a", "event_count": 1}]}

and the ``source`` fields every connector has: version, connector, name, ts_ms, snapshot
("true" | "last" | "false" | "incremental"), db, plus connector-specific ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.sync.client import connect

import dosql
from dolake.subscribe import request
from dosql.errors import ValidationError

from .helpers import READ, caught_up, expected, heads, shard_changes

TABLES = ["notes", "dbz_kv"]
ENVELOPE = ["before", "after", "source", "op", "ts_ms", "transaction"]
SOURCE_TYPES = {
    "version": str,
    "connector": str,
    "name": str,
    "ts_ms": int,
    "snapshot": str,
    "db": str,
    "table": str,
}


# ---------------------------------------------------------------- Flink's debezium-json rules


class FlinkParseError(Exception):
    pass


def flink_debezium_json(message: Any, *, schema_include: bool) -> list[tuple[str, dict]]:
    """A minimal reimplementation of Flink's DebeziumJsonDeserializationSchema: a null
    (tombstone) message yields nothing; with ``schema-include`` the message is
    ``{"schema", "payload"}``; the payload must have ``op`` (c/r -> +I after, u -> -U
    before and +U after, d -> -D before), and before must be present for u/d."""
    if message is None:
        return []
    if not isinstance(message, dict):
        raise FlinkParseError("not a JSON object")
    if schema_include:
        if set(message) != {"schema", "payload"}:
            raise FlinkParseError("schema-include: the message must be {schema, payload}")
        payload = message["payload"]
    else:
        if "schema" in message and "payload" in message:
            raise FlinkParseError("message has a schema: set debezium-json.schema-include")
        payload = message
    if payload is None:
        return []
    if not isinstance(payload, dict) or not {"before", "after", "op"} <= set(payload):
        raise FlinkParseError(f"not a Debezium change event: {payload!r:.100}")
    op, before, after = payload["op"], payload["before"], payload["after"]
    if op in ("c", "r"):
        return [("+I", after)]
    if op == "u":
        if before is None:
            raise FlinkParseError('"before" of an UPDATE is null (REPLICA IDENTITY FULL?)')
        return [("-U", before), ("+U", after)]
    if op == "d":
        if before is None:
            raise FlinkParseError('"before" of a DELETE is null')
        return [("-D", before)]
    raise FlinkParseError(f"unknown op {op!r}")


# ---------------------------------------------------------------- helpers


def frames(
    url: str, req: dict[str, Any], until: Callable[[list[dict]], bool], timeout: float = 60
) -> list[dict]:
    """Frames of one subscription (raw WebSocket, no client helper) until ``until``."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    with connect(
        url + "/cdc/subscribe", additional_headers={"Authorization": f"Bearer {READ}"}
    ) as ws:
        ws.send(json.dumps(req))
        while not until(out):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out after {len(out)} frames"
            frame = json.loads(ws.recv(timeout=left))
            assert frame.get("type") != "error", frame
            out.append(frame)
    return out


def is_row(f: dict) -> bool:
    v = f["value"]
    v = v["payload"] if isinstance(v, dict) and "payload" in v and "schema" in v else v
    return isinstance(v, dict) and "op" in v


def rows(fs: list[dict]) -> list[dict]:
    return [f for f in fs if f["value"] is not None and is_row(f)]


def check_envelope(v: dict, snapshot: str) -> None:
    """One change-event value against Debezium's documented shape and types."""
    assert list(v) == ENVELOPE
    assert v["op"] in ("c", "u", "d", "r")
    assert isinstance(v["ts_ms"], int)
    src = v["source"]
    for k, t in SOURCE_TYPES.items():
        assert isinstance(src[k], t), (k, src)
    assert src["connector"] == "dosql" and src["snapshot"] == snapshot
    assert src["name"] == "default" and src["db"] == "default"
    assert {"shard", "lsn", "gtid"} <= set(src)
    assert src["ts_ms"] <= v["ts_ms"]
    if v["op"] == "c":
        assert v["before"] is None and isinstance(v["after"], dict)
    if v["op"] == "d":
        assert v["after"] is None and isinstance(v["before"], dict)
    if v["op"] == "u":
        assert isinstance(v["before"], dict) and isinstance(v["after"], dict)
    if snapshot == "false":
        tx = v["transaction"]
        assert list(tx) == ["id", "total_order", "data_collection_order"]
        assert isinstance(tx["id"], str)
        assert isinstance(tx["total_order"], int) and tx["total_order"] >= 1
        assert isinstance(tx["data_collection_order"], int) and tx["data_collection_order"] >= 1
    else:
        assert v["op"] == "r" and v["transaction"] is None


@pytest.fixture(scope="module")
def dbz(env):
    """Rows before a snapshot, then: a distributed transaction over several shards and
    two tables, an update, deletes."""
    con = env.connect()
    cur = con.cursor()
    cur.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, score REAL, data BLOB)")
    cur.execute("CREATE TABLE dbz_kv (k TEXT PRIMARY KEY, v TEXT)")
    for i in range(1, 7):
        cur.execute("INSERT INTO notes VALUES (?, ?, ?, ?)", (i, f"n{i}", i / 2, bytes([i])))
    cur.execute("INSERT INTO dbz_kv VALUES ('a', 'x')")
    snapshot_rows = 7
    tx = env.connect(autocommit=False)
    tcur = tx.cursor()
    for i in range(101, 109):
        tcur.execute("INSERT INTO notes VALUES (?, ?, NULL, NULL)", (i, f"t{i}"))
    tcur.execute("UPDATE dbz_kv SET v = 'y' WHERE k = 'a'")
    tcur.execute("INSERT INTO dbz_kv VALUES ('b', 'z')")
    gtid = tx.transaction_id
    tx.commit()
    tx.close()
    cur.execute("UPDATE notes SET body = 'changed' WHERE id = 1")
    cur.execute("DELETE FROM notes WHERE id = 2")
    cur.execute("DELETE FROM dbz_kv WHERE k = 'b'")
    changes = shard_changes(env.cluster)
    want = expected(changes, set(TABLES), {})
    yield {
        "gtid": gtid,
        "expected": want,
        "target": {s: cur_lsn for s, (cur_lsn, _) in heads(env.cluster).items()},
        "snapshot_rows": snapshot_rows,
    }
    con.close()


def test_request_options_are_checked():
    sub = request.parse('{"tables": "*", "format": "debezium", "tombstones": true}')
    assert sub.format == "debezium" and sub.tombstones and not sub.schemas
    assert request.parse('{"tables": "*"}').format == "dosql"
    for bad in (
        '{"tables": "*", "format": "avro"}',
        '{"tables": "*", "tombstones": true}',
        '{"tables": "*", "format": "debezium", "schemas": 1}',
        '{"tables": "*", "format": "debezium", "name": ""}',
    ):
        with pytest.raises(ValidationError):
            request.parse(bad)


def test_stream_with_transaction_metadata(env, dbz):
    req = {"tables": TABLES, "start": "earliest", "format": "debezium", "tombstones": True}
    hb = "__debezium-heartbeat.default"
    fs = frames(
        env.sub.url,
        req,
        lambda out: (
            bool(out) and out[-1]["topic"] == hb and caught_up(out[-1]["position"], dbz["target"])
        ),
    )
    for f in fs:
        assert set(f) == {"topic", "key", "value", "position"}
    got = rows(fs)
    assert len(got) == len(dbz["expected"])
    for f in got:
        v = f["value"]
        check_envelope(v, "false")
        table = v["source"]["table"]
        assert f["topic"] == f"default.default.{table}"
        image = v["after"] or v["before"]
        assert f["key"] == ({"id": image["id"]} if table == "notes" else {"k": image["k"]})
    # dosql's values: BLOB base64, exact images
    first = next(f["value"] for f in got if f["key"] == {"id": 1} and f["value"]["op"] == "c")
    assert first["after"] == {"id": 1, "body": "n1", "score": 0.5, "data": "AQ=="}
    # tombstones: right after each delete, same key, value null
    for i, f in enumerate(fs):
        if f["value"] is not None and is_row(f) and f["value"]["op"] == "d":
            assert fs[i + 1] == {**f, "value": None}
    assert sum(f["value"] is None for f in fs) == 2

    # transaction metadata: BEGIN, the events, END (event_count, data_collections)
    tx_topic = "default.transaction"
    open_tx: dict[str, list[dict]] = {}
    ended: dict[str, list[dict]] = {}
    for f in fs:
        if f["topic"] == tx_topic:
            v = f["value"]
            assert f["key"] == {"id": v["id"]}
            assert set(v) == {"status", "id", "ts_ms", "event_count", "data_collections"}
            if v["status"] == "BEGIN":
                assert v["id"] not in open_tx and v["event_count"] is None
                assert v["data_collections"] is None
                open_tx[v["id"]] = []
            else:
                assert v["status"] == "END"
                evs = open_tx.pop(v["id"])
                assert v["event_count"] == len(evs)
                per: dict[str, int] = {}
                for e in evs:
                    c = f"default.{e['source']['table']}"
                    per[c] = per.get(c, 0) + 1
                assert {
                    d["data_collection"]: d["event_count"] for d in v["data_collections"]
                } == per
                ended[v["id"]] = evs
        elif f["value"] is not None and is_row(f):
            tx = f["value"]["transaction"]
            assert tx["id"] in open_tx, "a row event outside its BEGIN/END"
            if dbz["gtid"] in open_tx:  # a distributed transaction comes whole
                assert tx["id"] == dbz["gtid"]
            # per shard transactions are contiguous (across shards they may overlap)
            shard = f["value"]["source"]["shard"]
            mine = [
                t for t, evs in open_tx.items() if any(e["source"]["shard"] == shard for e in evs)
            ]
            assert mine in ([], [tx["id"]])
            open_tx[tx["id"]].append(f["value"])
    assert not open_tx
    for evs in ended.values():  # total_order counts the transaction's events ...
        assert [e["transaction"]["total_order"] for e in evs] == list(range(1, len(evs) + 1))
        seen: dict[str, int] = {}
        for e in evs:  # ... data_collection_order those of each table
            t = e["source"]["table"]
            seen[t] = seen.get(t, 0) + 1
            assert e["transaction"]["data_collection_order"] == seen[t]

    # the distributed transaction: one id (its gtid) on all its events, over 2+ shards
    dist = ended[dbz["gtid"]]
    assert len(dist) == 10
    assert len({e["source"]["shard"] for e in dist}) >= 2
    assert all(e["source"]["gtid"] == dbz["gtid"] for e in dist)
    assert len({e["source"]["ts_ms"] for e in dist}) == 1  # one commit time
    assert {e["source"]["table"] for e in dist} == {"notes", "dbz_kv"}
    upd = next(e for e in dist if e["op"] == "u")
    assert upd["before"] == {"k": "a", "v": "x"} and upd["after"] == {"k": "a", "v": "y"}
    # local transactions: "<shard>:<txid>"
    local = [e for tid, evs in ended.items() if tid != dbz["gtid"] for e in evs]
    for e in local:
        if e["source"]["gtid"] is None:
            src = e["source"]
            assert e["transaction"]["id"] == f"{src['shard']}:{src['txid']}"

    # a row consumer keeps the records whose value has op; Flink parses them all
    kinds = [k for f in fs if f["topic"].startswith("default.default.") for k, _ in
             flink_debezium_json(f["value"], schema_include=False)]  # fmt: skip
    assert kinds.count("-U") == kinds.count("+U") == 2
    assert kinds.count("-D") == 2 and kinds.count("+I") == len(dbz["expected"]) - 4
    # ... and would reject the metadata records: why "changes_only" exists
    with pytest.raises(FlinkParseError):
        flink_debezium_json(
            next(f for f in fs if f["topic"] == tx_topic)["value"], schema_include=False
        )


def test_changes_only_every_message_is_a_row_event(env, dbz):
    req = {"tables": TABLES, "start": "earliest", "format": "debezium", "changes_only": True}
    n = len(dbz["expected"])
    fs = frames(env.sub.url, req, lambda out: len(out) >= n)
    time.sleep(1.0)  # nothing else may follow: no heartbeat, commit or schema messages
    assert len(fs) == n
    for f in fs:
        assert "op" in f["value"]
        check_envelope(f["value"], "false")
        assert flink_debezium_json(f["value"], schema_include=False)
    got = [(f["value"]["source"]["shard"], f["value"]["source"]["lsn"]) for f in fs]
    assert sorted(got) == sorted((e[0], e[1]) for e in dbz["expected"])


def test_changes_only_stream_has_no_extra_messages(env, dbz):
    """Also over a longer wait: heartbeats would come every 0.3 s in this suite."""
    req = {"tables": ["dbz_kv"], "start": "earliest", "format": "debezium", "changes_only": True}
    n = sum(1 for e in dbz["expected"] if "k" in (e[3] or e[4]))
    extra: list[dict] = []
    fs = frames(env.sub.url, req, lambda out: len(out) >= n)
    with connect(
        env.sub.url + "/cdc/subscribe", additional_headers={"Authorization": f"Bearer {READ}"}
    ) as ws:
        ws.send(json.dumps({**req, "start": {"position": fs[-1]["position"]}}))
        with pytest.raises(TimeoutError):
            extra.append(ws.recv(timeout=1.5))
    assert not extra and all(is_row(f) for f in fs)


def test_snapshot_true_then_last(env, dbz):
    req = {"tables": ["notes"], "snapshot": True, "format": "debezium", "changes_only": True}
    live = sum(1 for e in dbz["expected"] if "id" in (e[3] or e[4]))
    live_rows = 6 + 8 - 1  # inserted, then one deleted
    fs = frames(env.sub.url, req, lambda out: len(out) >= live_rows)
    assert live > 0
    states = [f["value"]["source"]["snapshot"] for f in fs]
    assert states == ["true"] * (live_rows - 1) + ["last"]
    for f in fs:
        check_envelope(f["value"], f["value"]["source"]["snapshot"])
        assert f["value"]["before"] is None and f["key"] == {"id": f["value"]["after"]["id"]}
    assert {f["value"]["after"]["id"] for f in fs} == set(range(1, 7)) - {2} | set(range(101, 109))


def test_schemas_as_kafka_connect_json_converter(env, dbz):
    req = {
        "tables": ["notes"],
        "start": "earliest",
        "format": "debezium",
        "changes_only": True,
        "schemas": True,
        "tombstones": True,
    }
    n = sum(1 for e in dbz["expected"] if "id" in (e[3] or e[4])) + 1  # + a tombstone
    fs = frames(env.sub.url, req, lambda out: len(out) >= n)
    for f in fs:
        assert set(f["key"]) == {"schema", "payload"}
        ks = f["key"]["schema"]
        assert ks["type"] == "struct" and ks["name"] == "default.default.notes.Key"
        assert ks["fields"] == [{"type": "int64", "optional": False, "field": "id"}]
        if f["value"] is None:  # tombstone
            assert set(f["key"]["payload"]) == {"id"}
            continue
        image = f["value"]["payload"]["after"] or f["value"]["payload"]["before"]
        assert f["key"]["payload"] == {"id": image["id"]}
        assert set(f["value"]) == {"schema", "payload"}
        schema, payload = f["value"]["schema"], f["value"]["payload"]
        check_envelope(payload, "false")
        assert schema["type"] == "struct" and schema["name"] == "default.default.notes.Envelope"
        assert [x["field"] for x in schema["fields"]] == ENVELOPE
        after = schema["fields"][1]
        assert after["name"] == "default.default.notes.Value" and after["optional"]
        assert [(x["field"], x["type"], x["optional"]) for x in after["fields"]] == [
            ("id", "int64", False),
            ("body", "string", True),
            ("score", "double", True),
            ("data", "bytes", True),
        ]
        src = schema["fields"][2]
        assert [x["field"] for x in src["fields"]][:7] == list(SOURCE_TYPES)
        assert schema["fields"][5]["name"] == "event.block"
        assert flink_debezium_json(f["value"], schema_include=True)
        with pytest.raises(FlinkParseError):
            flink_debezium_json(f["value"], schema_include=False)
    assert sum(f["value"] is None for f in fs) == 1


def test_dosql_format_unchanged(env, dbz):
    """The default stays dosql's own shape (existing subscribers)."""
    fs = frames(
        env.sub.url,
        {"tables": ["dbz_kv"], "start": "earliest"},
        lambda out: any("op" in f for f in out) and out[-1].get("type") == "commit",
    )
    row = next(f for f in fs if "op" in f)
    assert row["key"] == ["a"] and row["source"]["snapshot"] is False
    assert "commit_ts_ms" in row["source"] and "transaction" not in row


def test_python_helper_passes_the_options(env, dbz):
    n = sum(1 for e in dbz["expected"] if "k" in (e[3] or e[4]))
    got = []
    with dosql.subscribe(
        env.sub.url, tables=["dbz_kv"], start="earliest", token=READ, timeout=30,
        format="debezium", tombstones=True,
    ) as sub:  # fmt: skip
        for record in sub:  # heartbeats left out by the helper, metadata records kept
            assert not record["topic"].startswith("__debezium-heartbeat.")
            got.append(record)
            if len([r for r in got if r["value"] is not None and is_row(r)]) == n:
                break
        assert sub.position == got[-1]["position"]
    assert any(r["topic"] == "default.transaction" for r in got)


def test_keys_of_composite_and_rowid_tables():
    """Composite keys become a record in key order; a table without a primary key has a
    null key (as in Debezium) and so no tombstone."""
    from dolake.subscribe.debezium import DebeziumFormat
    from dosql import protocol

    fmt = DebeziumFormat("srv", "db", tombstones=True, changes_only=True)
    cols = [protocol.ColumnInfo("b", "TEXT", True, 2), protocol.ColumnInfo("a", "INT", True, 1)]
    fmt.schema(
        "s0", "t", protocol.TableSchema(action="create", columns=cols, primary_key=["a", "b"]), "p"
    )
    fmt.schema(
        "s0", "heap", protocol.TableSchema(action="create", columns=cols[:1], primary_key=[]), "p"
    )
    ch = protocol.Change(5, 9, 1_000_000, "t", "delete", key=[1, "x"], before={"b": "x", "a": 1})
    out = fmt.row("s0", ch, "d", "p")
    assert [r["key"] for r in out] == [{"a": 1, "b": "x"}] * 2 and out[1]["value"] is None
    assert out[0]["value"]["transaction"] == {
        "id": "s0:9",
        "total_order": 1,
        "data_collection_order": 1,
    }
    heap = protocol.Change(6, 10, 1_000_000, "heap", "delete", key=[3], before={"b": "y"})
    out = fmt.row("s0", heap, "d", "p")
    assert len(out) == 1 and out[0]["key"] is None and out[0]["topic"] == "srv.db.heap"
    assert fmt.commit("s0", 9, 1_000_000, 1, "p") == []  # changes_only: no END record
