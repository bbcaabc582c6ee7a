"""InsertRouter.group (executemany's batch routing) must match routing each set alone."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dosql.errors import DoSQLError
from dosql.router.batch import InsertRouter
from dosql.router.catalog import TableInfo
from dosql.router.planner import plan
from tests.router.conftest import quickstart_vschema

VS = quickstart_vschema()
INFO = TableInfo(["id", "tenant_id", "name"], {}, ["id"], None, {"tenant_id": None})
INSERTS = [
    "INSERT INTO users (id, tenant_id, name) VALUES (?, ?, ?)",
    "INSERT INTO users VALUES (?, ?, ?)",  # key found through the table's columns
    "INSERT INTO users (tenant_id, id, name) VALUES (:t, :i, :n)",
    "INSERT INTO sessions (id, tenant_id) VALUES (?, ?)",  # consistent hash
    "INSERT INTO users (id, name) VALUES (?, ?)",  # key left to its default
    "INSERT INTO users (id, tenant_id, name) VALUES (?, 7, ?)",  # literal key
]
KEYS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.text(max_size=6),
    st.integers(-1000, 1000).map(str),
    st.binary(max_size=4),
)
PARAMS = st.one_of(
    st.lists(KEYS, max_size=4),
    st.lists(KEYS, max_size=4).map(tuple),
    st.fixed_dictionaries({"t": KEYS, "i": st.integers(), "n": st.text(max_size=2)}),
    st.none(),
)


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except DoSQLError as exc:
        return ("error", (type(exc), exc.code, exc.message))


def _one_by_one(router: InsertRouter, seq: list[Any]) -> dict[str, list[Any]]:
    key = router.key_of(router.plan.insert_rows[0][0])
    out: dict[str, list[Any]] = {}
    for params in seq:
        out.setdefault(router.shard_of(key, params), []).append(params)
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(INSERTS),
    st.lists(PARAMS, min_size=1, max_size=20),
    st.sampled_from([{}, {"users": "shard-2", "sessions": "shard-1"}]),
)
def test_group_matches_routing_each_set(
    sql: str, seq: list[Any], null_shards: dict[str, str]
) -> None:
    p = plan(sql, VS).insert
    router = InsertRouter(p, INFO, VS, null_shards)
    got = _outcome(lambda: router.group(seq))
    assert got == _outcome(lambda: _one_by_one(router, seq))
    if got[0] == "ok":  # and each set went where VSchema.shard_for puts its key
        for sid, sets in got[1].items():
            for params in sets:
                key = router.key_of(p.insert_rows[0][0]).bind(params)
                assert key is None or VS.shard_for(str(p.table), key) == sid


def test_a_table_without_its_sharding_column_gets_a_typed_error():
    """A table created on the shards directly, without the VSchema's sharding column."""
    p = plan("INSERT INTO users VALUES (?, ?)", VS).insert
    info = TableInfo(["id", "name"], {}, ["id"], None, {})
    outcome = _outcome(lambda: InsertRouter(p, info, VS, {}))
    assert outcome[0] == "error" and outcome[1][1] == "SHARDING_COLUMN_MISSING"
