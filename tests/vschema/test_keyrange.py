"""Key ranges: Vitess notation, even split, exact tiling of the 64-bit space."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vschema
from dosql.errors import ValidationError
from vschema.keyrange import KEYSPACE_SIZE, KeyRange, KeyRangeMap, check_cover, even_split


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("-40", 0, 0x40 << 56),
        ("40-80", 0x40 << 56, 0x80 << 56),
        ("80-", 0x80 << 56, KEYSPACE_SIZE),
        ("-", 0, KEYSPACE_SIZE),
        ("4000-4080", 0x4000 << 48, 0x4080 << 48),
        ("0123456789abcdef-fedcba9876543210", 0x0123456789ABCDEF, 0xFEDCBA9876543210),
    ],
)
def test_parse_and_format(spec: str, start: int, end: int) -> None:
    key_range = KeyRange.parse(spec)
    assert (key_range.start, key_range.end) == (start, end)
    assert KeyRange.parse(str(key_range)) == key_range
    if spec != "4000-4080":
        assert str(key_range) == spec
    assert str(KeyRange.parse("4000-4080")) == "40-4080"  # trailing zero bytes dropped


@pytest.mark.parametrize("spec", ["40", "80-40", "x-", "-40-80", "40-40", "-12345678901234567"])
def test_bad_notation(spec: str) -> None:
    with pytest.raises(ValidationError) as info:
        KeyRange.parse(spec)
    assert info.value.code == "INVALID_VSCHEMA"
    assert spec in info.value.message


def test_even_split_matches_vitess_for_powers_of_two() -> None:
    assert [str(r) for r in even_split(4)] == ["-40", "40-80", "80-c0", "c0-"]
    assert [str(r) for r in even_split(1)] == ["-"]


@st.composite
def tilings(draw: st.DrawFn) -> list[tuple[str, KeyRange]]:
    """Random contiguous tilings of the keyspace, in shuffled order."""
    cuts = draw(st.sets(st.integers(1, KEYSPACE_SIZE - 1), max_size=20))
    bounds = [0, *sorted(cuts), KEYSPACE_SIZE]
    pairs = [(f"s{i}", KeyRange(bounds[i], bounds[i + 1])) for i in range(len(bounds) - 1)]
    return draw(st.permutations(pairs))


@settings(deadline=None, max_examples=100)
@given(tilings(), st.lists(st.integers(0, KEYSPACE_SIZE - 1), min_size=1, max_size=50))
def test_every_keyspace_id_in_exactly_one_range(pairs, ids) -> None:
    check_cover(pairs)
    key_map = KeyRangeMap(pairs)
    for edge in [0, KEYSPACE_SIZE - 1, *(r.start for _, r in pairs), *ids]:
        owners = [shard for shard, r in pairs if r.contains(edge)]
        assert len(owners) == 1
        assert key_map.shard_for(edge) == owners[0]


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 64), st.lists(st.integers(0, KEYSPACE_SIZE - 1), max_size=30))
def test_even_split_tiles_the_space(count: int, ids: list[int]) -> None:
    ranges = even_split(count)
    check_cover([(str(i), r) for i, r in enumerate(ranges)])
    sizes = {r.end - r.start for r in ranges}
    assert max(sizes) - min(sizes) <= 1
    for kid in ids:
        assert sum(r.contains(kid) for r in ranges) == 1


@settings(deadline=None, max_examples=50)
@given(tilings(), st.data())
def test_vschema_hash_routing_agrees_with_key_ranges(pairs, data) -> None:
    # Shards listed in shuffled order: ownership follows the ranges, not the list order.
    shards = [{"id": s, "key_range": str(r)} for s, r in pairs]
    vs = vschema.from_dict(
        {"shards": shards, "tables": {"t": {"column": "k", "column_type": "INTEGER"}}}
    )
    assert {s.id: s.key_range for s in vs.shards} == dict(pairs)
    for key in data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20)):
        kid = vs.keyspace_id("t", key)
        owners = [s.id for s in vs.shards if s.key_range.contains(kid)]
        assert owners == [vs.shard_for("t", key)]


def test_vitess_style_uneven_ranges() -> None:
    vs = vschema.from_dict(
        {
            "shards": [
                {"id": "a", "key_range": "-20"},
                {"id": "b", "key_range": "20-c0"},
                {"id": "c", "key_range": "c0-"},
            ],
            "tables": {"t": {"column": "k"}},
        }
    )
    assert vs.key_ranges_explicit
    assert [str(s.key_range) for s in vs.shards] == ["-20", "20-c0", "c0-"]
    for key in range(200):
        kid = vs.keyspace_id("t", key)
        expected = "a" if kid < 0x20 << 56 else "b" if kid < 0xC0 << 56 else "c"
        assert vs.shard_for("t", key) == expected
