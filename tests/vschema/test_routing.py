"""Routing properties: determinism across processes, balance, ring stability, ranges."""

from __future__ import annotations

import base64
import os
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vschema
from dosql.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "vschema.toml"


def run_python(code: str, stdin: bytes = b"", env_extra: dict[str, str] | None = None) -> str:
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


keys = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.integers(-(10**6), 10**6).map(str),
)

ROUTE_IN_CHILD = """
import base64, pickle, sys, vschema
keys = pickle.loads(base64.b64decode(sys.stdin.buffer.read()))
vs = vschema.load(sys.argv[1] if len(sys.argv) > 1 else "examples/quickstart/vschema.toml")
out = [(vs.keyspace_id(t, k), vs.shard_for(t, k)) for t in ("users", "sessions") for k in keys]
print(repr(out))
"""


def routes(vs: vschema.VSchema, batch: list) -> list:
    return [
        (vs.keyspace_id(t, k), vs.shard_for(t, k)) for t in ("users", "sessions") for k in batch
    ]


@settings(deadline=None, max_examples=3)
@given(st.lists(keys, min_size=1, max_size=200))
def test_routing_is_deterministic_across_processes(batch: list) -> None:
    vs = vschema.load(QUICKSTART)
    payload = base64.b64encode(pickle.dumps(batch))
    # A different hash seed in the child: routing must not depend on Python's hash().
    child = run_python(ROUTE_IN_CHILD, payload, {"PYTHONHASHSEED": "12345"})
    assert child.strip() == repr(routes(vs, batch))


def test_quickstart_integer_and_text_route_alike_in_fresh_process() -> None:
    code = (
        "import vschema\n"
        "vs = vschema.load('examples/quickstart/vschema.toml')\n"
        "print(vs.shard_for('users', 42), vs.shard_for('users', '42'), "
        "vs.shard_for('users', 42.0))\n"
    )
    first, second, third = run_python(code).split()
    assert first == second == third
    assert first == vschema.load(QUICKSTART).shard_for("users", 42)


def _random_keys(seed: int, count: int) -> list:
    rng = random.Random(seed)
    out: list = []
    for i in range(count):
        if i % 2:
            out.append(rng.getrandbits(64) - 2**63)
        else:
            out.append(f"user-{rng.getrandbits(40):x}")
    return out


@settings(deadline=None, max_examples=3)
@given(st.integers(0, 2**32))
def test_hash_balance_over_16_shards(seed: int) -> None:
    vs = vschema.from_dict({"shard_count": 16, "tables": {"t": {"column": "k"}}})
    counts = Counter(vs.shard_for("t", key) for key in _random_keys(seed, 100_000))
    fair = 100_000 / 16
    assert set(counts) == set(vs.shard_ids)
    for shard_id, count in counts.items():
        assert abs(count - fair) <= 0.05 * fair, (shard_id, count)


def _ring(count: int) -> vschema.VSchema:
    return vschema.from_dict(
        {"shard_count": count, "tables": {"t": {"column": "k", "vindex": "consistent_hash"}}}
    )


@settings(deadline=None, max_examples=3)
@given(st.integers(0, 2**32))
def test_consistent_hash_adding_ninth_shard(seed: int) -> None:
    eight, nine = _ring(8), _ring(9)
    batch = _random_keys(seed, 100_000)
    moved = Counter()
    for key in batch:
        before, after = eight.shard_for("t", key), nine.shard_for("t", key)
        if before != after:
            moved[after] += 1
    assert set(moved) == {"shard-8"}, "keys may only move onto the new shard"
    assert 0.08 <= moved["shard-8"] / len(batch) <= 0.15


@st.composite
def numeric_ranges(draw: st.DrawFn) -> list[int]:
    return sorted(draw(st.sets(st.integers(-(10**9), 10**9), min_size=2, max_size=6)))


@settings(deadline=None, max_examples=60)
@given(numeric_ranges(), st.data())
def test_range_vindex_boundaries(bounds: list[int], data: st.DataObject) -> None:
    shard_ids = [f"s{i}" for i in range(len(bounds) - 1)]
    ranges = [
        {"shard": shard_ids[i], "min": bounds[i], "max": bounds[i + 1]}
        for i in range(len(bounds) - 1)
    ]
    vs = vschema.create_vschema(
        {"m": vschema.sharded_table("v", vschema.range_vindex(ranges), column_type="INTEGER")},
        [vschema.shard(s) for s in shard_ids],
    )
    for i, shard_id in enumerate(shard_ids):
        assert vs.shard_for("m", bounds[i]) == shard_id  # min inclusive
        assert vs.shard_for("m", bounds[i + 1] - 1) == shard_id
        assert vs.shard_for("m", str(bounds[i])) == shard_id  # '42' converts in INTEGER
        if i + 1 < len(shard_ids):
            assert vs.shard_for("m", bounds[i + 1]) == shard_ids[i + 1]  # max exclusive
    value = data.draw(st.integers(bounds[0], bounds[-1] - 1))
    owner = vs.shard_for("m", value)
    assert [r["shard"] for r in ranges if r["min"] <= value < r["max"]] == [owner]
    for outside in (bounds[0] - 1, bounds[-1], bounds[-1] + 10**6):
        with pytest.raises(ValidationError) as info:
            vs.shard_for("m", outside)
        assert info.value.code == "VALUE_OUT_OF_RANGE"
        assert "m.v" in info.value.message


def test_quickstart_events_by_year() -> None:
    vs = vschema.load(QUICKSTART)
    assert vs.shard_for("events", "2024-01-01") == "shard-0"
    assert vs.shard_for("events", "2024-12-31 23:59:59") == "shard-0"
    assert vs.shard_for("events", "2025-01-01") == "shard-1"
    assert vs.shard_for("events", "2026-06-30") == "shard-2"
    assert vs.shard_for("events", "2027-12-31") == "shard-3"
    for outside in ("2023-12-31", "2028-01-01", 2023):
        with pytest.raises(ValidationError) as info:
            vs.shard_for("events", outside)
        assert info.value.code == "VALUE_OUT_OF_RANGE"
        assert "events.event_date" in info.value.message
        assert "2024-01-01" in info.value.message  # names the available ranges
    import datetime

    assert vs.shard_for("events", datetime.date(2025, 3, 1)) == "shard-1"


def test_shards_for_range() -> None:
    vs = vschema.load(QUICKSTART)
    assert vs.shards_for_range("events", "2025-03-01", "2025-04-01") == ["shard-1"]
    assert vs.shards_for_range("events", "2024-06-01", "2026-02-01") == [
        "shard-0",
        "shard-1",
        "shard-2",
    ]
    # max exclusive: [.., '2025-01-01') does not reach shard-1 unless high is inclusive
    assert vs.shards_for_range("events", "2024-06-01", "2025-01-01") == ["shard-0"]
    assert vs.shards_for_range("events", "2024-06-01", "2025-01-01", high_inclusive=True) == [
        "shard-0",
        "shard-1",
    ]
    assert vs.shards_for_range("events", "2027-01-01", None) == ["shard-3"]
    assert vs.shards_for_range("events", None, "2024-02-01") == ["shard-0"]
    assert vs.shards_for_range("events", "2030-01-01", None) == []
    assert vs.shards_for_range("users", 1, 10) == list(vs.shard_ids)
    assert vs.shards_for_range("system_config", 1, 10) == ["shard-0"]
    assert vs.shards_for_range("countries", None, None) == list(vs.shard_ids)


def test_shards_for_values_and_kinds() -> None:
    vs = vschema.load(QUICKSTART)
    values = list(range(50))
    expected = sorted({vs.shard_for("users", v) for v in values}, key=vs.shard_ids.index)
    assert vs.shards_for_values("users", values) == expected
    assert vs.shards_for_values("USERS", [7, "7", 7.0]) == [vs.shard_for("users", 7)]
    assert vs.shards_for_values("countries", [1]) == list(vs.shard_ids)
    assert vs.shards_for_values("system_config", [1, 2]) == ["shard-0"]
    assert vs.shard_for("system_config", None) == "shard-0"
    with pytest.raises(ValidationError) as info:
        vs.shards_for_values("users", [1, None])
    assert info.value.code == "SHARDING_KEY_NULL"
    with pytest.raises(ValidationError) as info:
        vs.shard_for("users", None)
    assert info.value.code == "SHARDING_KEY_NULL"
    assert "users.tenant_id" in info.value.message
    with pytest.raises(ValidationError):
        vs.shard_for("countries", 1)
    with pytest.raises(ValidationError):
        vs.keyspace_id("system_config", 1)


AFFINITY_VS = vschema.from_dict(
    {
        "shard_count": 8,
        "tables": {
            name: {"column": "k", "column_type": column_type}
            for name, column_type in [
                ("t_int", "INTEGER"),
                ("t_text", "VARCHAR(32)"),
                ("t_real", "DOUBLE"),
                ("t_blob", "BLOB"),
                ("t_untyped", None),
            ]
            if column_type is not None
        }
        | {"t_untyped": {"column": "k"}},
    }
)


@settings(deadline=None, max_examples=200)
@given(st.integers(-(2**53), 2**53))
def test_routing_is_type_stable_per_affinity(n: int) -> None:
    vs = AFFINITY_VS
    for table in ("t_int", "t_untyped"):  # INTEGER, and NUMERIC when the type is unknown
        assert (
            vs.shard_for(table, n) == vs.shard_for(table, str(n)) == vs.shard_for(table, float(n))
        )
        assert vs.keyspace_id(table, n) == vs.keyspace_id(table, f"{n}.0")
    # TEXT: numbers become their SQLite text
    assert vs.keyspace_id("t_text", n) == vs.keyspace_id("t_text", str(n))
    if abs(n) < 10**14:  # SQLite writes larger REALs with an exponent ('1.0e+15')
        assert vs.keyspace_id("t_text", float(n)) == vs.keyspace_id("t_text", f"{n}.0")
    # REAL: ints become floats, numeric text too
    assert vs.keyspace_id("t_real", n) == vs.keyspace_id("t_real", float(n))
    assert vs.keyspace_id("t_real", n) == vs.keyspace_id("t_real", str(n))
    # BLOB (declared BLOB): no conversion, so text and integer are different keys
    assert vs.keyspace_id("t_blob", n) != vs.keyspace_id("t_blob", str(n))
    assert vs.keyspace_id("t_blob", n) == vs.keyspace_id("t_blob", float(n))  # equal numbers
