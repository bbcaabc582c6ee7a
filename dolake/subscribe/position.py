"""Positions: a vector of per-shard LSNs, as one opaque URL-safe string.

Across shards there is no global order, so "where a subscriber is" is the
last LSN it has been given of every shard (like Vitess's VGtid). On the wire
it is ``base64url(version byte + compact JSON {"shard": lsn, ...})`` without
padding: opaque to clients (store it, send it back), versioned so the format
can change without breaking stored positions. A position means "every change
with ``lsn <=`` its entry has been delivered"; resuming from it delivers
exactly the changes after it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from dosql.errors import ValidationError

VERSION = 1


def encode(vector: Mapping[str, int]) -> str:
    body = json.dumps(dict(sorted(vector.items())), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(bytes([VERSION]) + body).rstrip(b"=").decode("ascii")


def decode(text: object) -> dict[str, int]:
    """The vector of a position string; anything else -> ValidationError INVALID_INPUT."""
    if not isinstance(text, str) or not text or len(text) > 100_000:
        raise bad_position("a position is the non-empty string of an event's 'position'")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise bad_position("not base64url") from None
    if not raw or raw[0] != VERSION:
        raise bad_position("unknown position version")
    try:
        vector = json.loads(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise bad_position("corrupt position body") from None
    if not isinstance(vector, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in vector.items()
    ):
        raise bad_position("corrupt position body")
    return vector


def bad_position(why: str) -> ValidationError:
    return ValidationError(
        f"bad position: {why}; resume with a 'position' string taken from an event, or start "
        'from "earliest", "latest" or {"timestamp": ...}',
        code="INVALID_INPUT",
    )
