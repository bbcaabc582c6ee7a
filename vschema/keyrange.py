"""Key ranges over the unsigned 64-bit keyspace-id space, in Vitess notation.

A hash vindex maps a key to a 64-bit keyspace id; each shard owns one
contiguous, half-open range of ids ``[start, end)``. Ranges are what lets a
shard later be split in two without rehashing everything. Vitess writes them
as hex prefixes of the big-endian id: ``-40`` is ``[0, 0x40000000_00000000)``,
``40-80`` the next quarter, ``80-`` everything from ``0x80…`` up, ``-`` the
whole space.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dosql.errors import ValidationError

KEYSPACE_SIZE = 2**64
_HEX = re.compile(r"[0-9a-fA-F]{0,16}")


def _invalid(message: str, **details: str) -> ValidationError:
    return ValidationError(message, code="INVALID_VSCHEMA", details=dict(details))


def _parse_bound(text: str, *, empty: int, spec: str) -> int:
    if text == "":
        return empty
    if not _HEX.fullmatch(text):
        raise _invalid(
            f"key range {spec!r}: {text!r} is not a hex prefix of at most 16 digits "
            "(write ranges like '-40', '40-80', '80-')",
            key_range=spec,
        )
    return int(text.ljust(16, "0"), 16)


def _format_bound(value: int) -> str:
    if value in (0, KEYSPACE_SIZE):
        return ""
    text = f"{value:016x}"
    while text.endswith("00"):
        text = text[:-2]
    return text


@dataclass(frozen=True, order=True)
class KeyRange:
    """Keyspace ids ``start <= id < end``; ``end`` may be 2**64 (the top of the space)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= KEYSPACE_SIZE:
            raise _invalid(
                f"key range [{self.start:#x}, {self.end:#x}) is empty or outside the "
                "64-bit keyspace",
                key_range=f"{self.start:#x}-{self.end:#x}",
            )

    @classmethod
    def parse(cls, spec: str) -> KeyRange:
        """Parse Vitess notation: ``"-40"``, ``"40-80"``, ``"80-"``, ``"-"``."""
        if not isinstance(spec, str) or spec.count("-") != 1:
            raise _invalid(
                f"key range {spec!r} must look like '-40', '40-80' or '80-'", key_range=str(spec)
            )
        low, high = spec.split("-")
        start = _parse_bound(low, empty=0, spec=spec)
        end = _parse_bound(high, empty=KEYSPACE_SIZE, spec=spec)
        if start >= end:
            raise _invalid(
                f"key range {spec!r} is empty: its start is not below its end", key_range=spec
            )
        return cls(start, end)

    def __str__(self) -> str:
        return f"{_format_bound(self.start)}-{_format_bound(self.end)}"

    def contains(self, keyspace_id: int) -> bool:
        return self.start <= keyspace_id < self.end

    def describe(self) -> str:
        """Inclusive hex bounds, for humans: ``0x0000…0000..0x3fff…ffff``."""
        return f"0x{self.start:016x}..0x{self.end - 1:016x}"


def even_split(count: int) -> list[KeyRange]:
    """``count`` contiguous ranges of (almost exactly) equal size covering the space."""
    if count < 1:
        raise _invalid(f"cannot split the keyspace into {count} shards: need at least one")
    bounds = [i * KEYSPACE_SIZE // count for i in range(count + 1)]
    return [KeyRange(bounds[i], bounds[i + 1]) for i in range(count)]


def check_cover(ranges: Sequence[tuple[str, KeyRange]]) -> None:
    """Require ``(shard_id, range)`` pairs to tile the keyspace: no overlap, no gap."""
    ordered = sorted(ranges, key=lambda pair: (pair[1].start, pair[1].end))
    position, previous = 0, None
    for shard_id, key_range in ordered:
        if key_range.start < position:
            raise _invalid(
                f"key ranges of shards {previous!r} and {shard_id!r} overlap "
                f"({_range_of(ordered, previous)} and {key_range})",
                shard=shard_id,
            )
        if key_range.start > position:
            where = f"after shard {previous!r}" if previous else "before the first shard"
            raise _invalid(
                f"key ranges leave a gap {KeyRange(position, key_range.start)} {where}, before "
                f"shard {shard_id!r} ({key_range}): ranges must cover the whole keyspace",
                shard=shard_id,
            )
        position, previous = key_range.end, shard_id
    if position != KEYSPACE_SIZE:
        raise _invalid(
            f"key ranges leave a gap {KeyRange(position, KEYSPACE_SIZE)} after shard "
            f"{previous!r}: ranges must cover the whole keyspace",
            shard=str(previous),
        )


def _range_of(ordered: Sequence[tuple[str, KeyRange]], shard_id: str | None) -> str:
    return next((str(r) for s, r in ordered if s == shard_id), "?")


class KeyRangeMap:
    """Find the shard that owns a keyspace id (binary search over range starts)."""

    def __init__(self, ranges: Sequence[tuple[str, KeyRange]]) -> None:
        check_cover(ranges)
        ordered = sorted(ranges, key=lambda pair: pair[1].start)
        self._starts = [r.start for _, r in ordered]
        self._shards = [s for s, _ in ordered]

    def shard_for(self, keyspace_id: int) -> str:
        if not 0 <= keyspace_id < KEYSPACE_SIZE:
            raise ValidationError(
                f"keyspace id {keyspace_id} is outside the unsigned 64-bit range",
                code="INVALID_INPUT",
            )
        return self._shards[bisect.bisect_right(self._starts, keyspace_id) - 1]
