"""Positions: a vector of per-shard LSNs, as one opaque URL-safe string.

Across shards there is no global order, so "where a subscriber is" is the
last LSN it has been given of every shard (like Vitess's VGtid). On the wire
it is ``base64url(version byte + compact JSON {"shard": lsn, ...})`` without
padding: opaque to clients (store it, send it back), versioned so the format
can change without breaking stored positions. A position means "every change
with ``lsn <=`` its entry has been delivered"; resuming from it delivers
exactly the changes after it.

Inside a distributed transaction events are delivered in an order a per-key
consumer can follow (a moved row's delete before its insert), which is not
each shard's LSN order, so a position there also names the LSNs above a
shard's entry that were already delivered: version 2,
``{"v": {shard: lsn}, "x": {shard: [lsn, ...]}}``. Positions without such
LSNs (every position outside a distributed transaction) stay version 1.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping

from dosql.errors import ValidationError

VERSION = 1
VERSION_EXTRA = 2


def encode(vector: Mapping[str, int], extra: Mapping[str, Iterable[int]] | None = None) -> str:
    """A position: ``vector`` (per shard, every LSN up to it delivered) and ``extra``
    (per shard, LSNs above it delivered too)."""
    extra = {s: sorted(v) for s, v in (extra or {}).items() if v}
    if extra:
        doc: object = {"v": dict(sorted(vector.items())), "x": dict(sorted(extra.items()))}
        version = VERSION_EXTRA
    else:
        doc, version = dict(sorted(vector.items())), VERSION
    body = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(bytes([version]) + body).rstrip(b"=").decode("ascii")


def decode(text: object) -> dict[str, int]:
    """The vector of a position string; anything else -> ValidationError INVALID_INPUT."""
    return decode_full(text)[0]


def decode_full(text: object) -> tuple[dict[str, int], dict[str, set[int]]]:
    """(vector, extra LSNs) of a position string (see the module docstring)."""
    if not isinstance(text, str) or not text or len(text) > 100_000:
        raise bad_position("a position is the non-empty string of an event's 'position'")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise bad_position("not base64url") from None
    if not raw or raw[0] not in (VERSION, VERSION_EXTRA):
        raise bad_position("unknown position version")
    try:
        doc = json.loads(raw[1:])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_position("corrupt position body") from None
    extra: dict[str, set[int]] = {}
    if raw[0] == VERSION_EXTRA:
        if not isinstance(doc, dict) or set(doc) != {"v", "x"} or not isinstance(doc["x"], dict):
            raise bad_position("corrupt position body")
        vector = doc["v"]
        for shard, lsns in doc["x"].items():
            if not isinstance(lsns, list) or not all(type(v) is int and v > 0 for v in lsns):
                raise bad_position("corrupt position body")
            extra[shard] = set(lsns)
    else:
        vector = doc
    if not isinstance(vector, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in vector.items()
    ):
        raise bad_position("corrupt position body")
    for shard, lsns in extra.items():
        if shard not in vector or any(v <= vector[shard] for v in lsns):
            raise bad_position("corrupt position body")
    return vector, extra


def bad_position(why: str) -> ValidationError:
    return ValidationError(
        f"bad position: {why}; resume with a 'position' string taken from an event, or start "
        'from "earliest", "latest" or {"timestamp": ...}',
        code="INVALID_INPUT",
    )
