"""VSchema.shard_router (the router's per-batch fast path) must route exactly as shard_for."""

from __future__ import annotations

import datetime
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import vschema
from dosql.errors import DoSQLError
from tests.vschema.test_values import DECLARED_TYPES

COLUMN_TYPES = [None, "int", *DECLARED_TYPES]

KEYS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**70), 2**70),  # beyond int64: refused
    st.sampled_from([2**53, 2**53 + 1, -(2**53), -(2**53) - 1, 2**63 - 1, -(2**63), 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 2.0**53, 2.0**63, -(2.0**63), 0.5, math.inf, math.nan]),
    st.text(max_size=12),
    st.integers(-(10**20), 10**20).map(str),  # numeric text, some beyond int64
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from([" 42 ", "+7", "0x10", "1e3", "4.0", "-0", "", "\ud800", "é"]),
    st.binary(max_size=12),
    st.booleans(),
    st.none(),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=6).map(bytearray),
    st.just(object()),  # unsupported type
)


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        return ("shard", fn(value))
    except DoSQLError as exc:
        return ("error", (type(exc), exc.code, exc.message, exc.details))


def _assert_same(vs: vschema.VSchema, table: str, values: list[Any]) -> None:
    route = vs.shard_router(table)
    for value in values:
        expected = _outcome(lambda v: vs.shard_for(table, v), value)
        assert _outcome(route, value) == expected, (table, value)


def _vschema(shard_count: int, column_type: str | None, virtual_nodes: int) -> vschema.VSchema:
    ids = [f"s{i}" for i in range(shard_count)]
    ranges = [
        {"shard": ids[0], "max": 0},
        {"shard": ids[-1], "min": 0, "max": 10**6},
    ]
    text_ranges = [{"shard": ids[0], "max": "m"}, {"shard": ids[-1], "min": "m"}]
    tables = {
        "h": vschema.sharded_table("k", vschema.hash_vindex(), column_type),
        "c": vschema.sharded_table("k", vschema.consistent_hash_vindex(virtual_nodes), column_type),
        "r": vschema.sharded_table("k", vschema.range_vindex(ranges), column_type),
        "rt": vschema.sharded_table("k", vschema.range_vindex(text_ranges), column_type),
        "u": vschema.unsharded_table(ids[-1]),
        "ref": vschema.reference_table(),
    }
    return vschema.create_vschema(tables, [vschema.shard(i) for i in ids])


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5),
    st.sampled_from(COLUMN_TYPES),
    st.integers(1, 8),
    st.lists(KEYS, min_size=1, max_size=30),
)
def test_shard_router_matches_shard_for(
    shard_count: int, column_type: str | None, virtual_nodes: int, values: list[Any]
) -> None:
    vs = _vschema(shard_count, column_type, virtual_nodes)
    for table in ("h", "c", "r", "rt", "u", "ref", "missing", "H"):
        _assert_same(vs, table, values)


def test_shard_router_fast_path_edges() -> None:
    """The boundaries of the int fast path, where REAL stops being exact."""
    values: list[Any] = [2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 2**63, True]
    values += ["12", "  12", "12.0", "abc", datetime.date(2024, 1, 2)]
    for column_type in COLUMN_TYPES:
        vs = _vschema(4, column_type, 3)
        for table in ("h", "c"):
            _assert_same(vs, table, values)
