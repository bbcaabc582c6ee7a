"""Bad input: each case gets an error event with a code and a clear message, then close 1008;
the server keeps serving. A missing or wrong token is refused at the handshake (HTTP 401)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import dosql
from dolake.subscribe import position, request
from dosql.errors import AuthorizationError, ValidationError

from .helpers import ADMIN, READ


@pytest.fixture(scope="module")
def url(env):
    con = env.connect()
    con.cursor().execute("CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, v TEXT)")
    con.close()
    return env.sub.url + "/cdc/subscribe"


def refused(url: str, frame: str | bytes) -> dict:
    with connect(url, additional_headers={"Authorization": f"Bearer {READ}"}) as ws:
        ws.send(frame)
        event = json.loads(ws.recv(timeout=20))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
        assert ws.close_code == 1008
    assert event["type"] == "error" and event["message"]
    return event


CASES = [
    ("not json", "INVALID_INPUT", "not JSON"),
    ("[1, 2]", "INVALID_INPUT", "JSON object"),
    (json.dumps({"tables": "probe"}), "INVALID_INPUT", '"tables"'),
    (json.dumps({"tables": []}), "INVALID_INPUT", '"tables"'),
    (json.dumps({"tables": ["nope"]}), "TABLE_NOT_FOUND", "nope"),
    (json.dumps({"tables": "*", "start": "yesterday"}), "INVALID_INPUT", '"start"'),
    (json.dumps({"tables": "*", "start": {"position": "%%%"}}), "INVALID_INPUT", "bad position"),
    (json.dumps({"tables": "*", "start": {"position": "AAAA"}}), "INVALID_INPUT", "bad position"),
    (
        json.dumps({"tables": "*", "start": {"position": position.encode({"shard-9": 1})}}),
        "INVALID_INPUT",
        "shard-9",
    ),
    (
        json.dumps({"tables": "*", "start": {"position": position.encode({"shard-0": 10**9})}}),
        "SHARD_LSN_BEHIND",  # the shard's database may have gone back: never wait silently
        "ahead",
    ),
    (json.dumps({"tables": "*", "start": {"timestamp": "noon"}}), "INVALID_INPUT", "ISO 8601"),
    (json.dumps({"tables": "*", "ops": ["x"]}), "INVALID_INPUT", '"ops"'),
    (json.dumps({"tables": "*", "filter": {"v": [1]}}), "INVALID_INPUT", '"filter"'),
    (json.dumps({"tables": "*", "snapshot": "yes"}), "INVALID_INPUT", '"snapshot"'),
    (json.dumps({"tables": "*", "snapshot": True, "start": "earliest"}), "INVALID_INPUT", "snap"),
    (json.dumps({"tables": "*", "bogus": 1}), "INVALID_INPUT", "bogus"),
    (b"\xff\x00\x01", "INVALID_INPUT", "UTF-8"),
    ("[" * 100_000 + "]" * 100_000, "INVALID_INPUT", "not JSON"),  # was a RecursionError
]


@pytest.mark.parametrize(("frame", "code", "words"), CASES)
def test_bad_subscribe_messages(url, frame, code, words):
    event = refused(url, frame)
    assert event["code"] == code
    assert words in event["message"]


def test_token_required(env, url):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as info:
            connect(url, additional_headers=headers).close()
        assert info.value.response.status_code == 401
        body = json.loads(info.value.response.body)
        assert body["error"]["code"] == "AUTHENTICATION_REQUIRED"
    with pytest.raises(AuthorizationError):
        dosql.subscribe(env.sub.url, tables=["probe"])
    # the helper raises the server's error event as the typed exception
    with pytest.raises(ValidationError) as info:
        for _ in dosql.subscribe(env.sub.url, tables=["probe"], start="!!", token=READ):
            pass
    assert info.value.code == "INVALID_INPUT"
    # and the server still serves good requests, with read or admin tokens
    for token in (READ, ADMIN):
        with dosql.subscribe(
            env.sub.url, tables=["probe"], token=token, heartbeats=True, timeout=10
        ) as sub:
            assert next(iter(sub))["type"] == "heartbeat"


@settings(deadline=None, max_examples=200)
@given(st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.hex()))
def test_position_garbage_is_invalid_input(text):
    try:
        vector = position.decode(text)
    except ValidationError as exc:
        assert exc.code == "INVALID_INPUT" and "bad position" in exc.message
    else:  # the rare valid string must round-trip
        assert position.decode(position.encode(vector)) == vector


@settings(deadline=None, max_examples=100)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(0, 2**63 - 1), max_size=6))
def test_position_round_trip(vector):
    text = position.encode(vector)
    assert text.isascii() and "=" not in text and "/" not in text and "+" not in text
    assert position.decode(text) == vector


def test_request_parsing():
    sub = request.parse(json.dumps({"tables": ["Users"], "ops": ["c"], "filter": {"key": [1]}}))
    assert sub.tables == frozenset({"users"}) and sub.ops == frozenset({"insert"})
    assert sub.wants_key([1]) and not sub.wants_key([2])
    sub = request.parse(json.dumps({"tables": "*", "start": {"timestamp": "1970-01-01T00:00:01Z"}}))
    assert sub.start.micros == 1_000_000 and sub.tables is None
    composite = request.parse(json.dumps({"tables": "*", "filter": {"key": [[1, "a"]]}}))
    assert composite.wants_key([1, "a"]) and not composite.wants_key([1])
