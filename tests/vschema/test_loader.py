"""Loading, round trips, the builder API, derived VSchemas and the CLI."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vschema
from dosql.errors import NotFoundError
from vschema import (
    ConsistentHashVindex,
    HashVindex,
    KeyRange,
    RangeVindex,
    Settings,
    consistent_hash_vindex,
    create_vschema,
    hash_vindex,
    range_vindex,
    reference_table,
    shard,
    sharded_table,
    unsharded_table,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "vschema.toml"


def test_quickstart_loads_as_specified() -> None:
    vs = vschema.load(QUICKSTART)
    assert vs.shard_ids == ("shard-0", "shard-1", "shard-2", "shard-3")
    assert vs.default_shard == "shard-0"
    assert vs.default_table == "shard_by_primary_key"
    assert {s.id: s.metadata["region"] for s in vs.shards}["shard-2"] == "us-east"
    assert [str(s.key_range) for s in vs.shards] == ["-40", "40-80", "80-c0", "c0-"]
    kinds = {name: t.kind for name, t in vs.tables.items()}
    assert kinds == {
        "users": "sharded",
        "orders": "sharded",
        "sessions": "sharded",
        "events": "sharded",
        "countries": "reference",
        "system_config": "unsharded",
    }
    users = vs.table("Users")
    assert (users.column, users.column_type, type(users.vindex)) == (
        "tenant_id",
        "INTEGER",
        HashVindex,
    )
    assert isinstance(vs.table("sessions").vindex, ConsistentHashVindex)
    assert isinstance(vs.table("events").vindex, RangeVindex)
    assert vs.table("system_config").shard == "shard-0"
    # users and orders share the vindex: one tenant's rows are co-located
    for tenant in range(100):
        assert vs.shard_for("users", tenant) == vs.shard_for("orders", tenant)
    assert vs.settings == Settings(8, 10000, True)


def test_lookups_of_unknown_names() -> None:
    vs = vschema.load(QUICKSTART)
    assert vs.has_table("USERS") and not vs.has_table("nope")
    with pytest.raises(NotFoundError) as info:
        vs.table("nope")
    assert info.value.code == "TABLE_NOT_FOUND" and "nope" in info.value.message
    with pytest.raises(NotFoundError) as info:
        vs.shard("shard-9")
    assert info.value.code == "SHARD_NOT_FOUND"
    assert vs.shard("shard-1").id == "shard-1"


def test_round_trip_quickstart() -> None:
    vs = vschema.load(QUICKSTART)
    again = vschema.from_dict(vs.to_dict())
    assert again == vs
    assert again.to_dict() == vs.to_dict()
    for key in range(200):
        assert again.shard_for("sessions", key) == vs.shard_for("sessions", key)


def _random_vschema(data: st.DataObject) -> dict[str, Any]:
    count = data.draw(st.integers(1, 6))
    explicit = data.draw(st.booleans())
    cuts = sorted(data.draw(st.sets(st.integers(1, 255), min_size=count - 1, max_size=count - 1)))
    bounds = ["", *(f"{c:02x}" for c in cuts), ""]
    shards = []
    for i in range(count):
        entry: dict[str, Any] = {"id": f"s{i}"}
        if explicit:
            entry["key_range"] = f"{bounds[i]}-{bounds[i + 1]}"
        if data.draw(st.booleans()):
            entry["metadata"] = {"region": data.draw(st.sampled_from(["eu", "us"]))}
        if data.draw(st.booleans()):
            entry["address"] = f"ws://127.0.0.1:{4000 + i}"
        shards.append(entry)
    ids = [s["id"] for s in shards]
    edges = sorted(data.draw(st.sets(st.integers(0, 1000), min_size=2, max_size=5)))
    ranges = [
        {"shard": data.draw(st.sampled_from(ids)), "min": edges[i], "max": edges[i + 1]}
        for i in range(len(edges) - 1)
    ]
    return {
        "default_shard": data.draw(st.sampled_from(ids)),
        "default_table": data.draw(st.sampled_from(vschema.DEFAULT_TABLE_POLICIES)),
        "settings": {"max_parallel_shards": data.draw(st.integers(1, 64))},
        "shards": shards,
        "vindexes": {
            "ring": {"type": "consistent_hash", "virtual_nodes": data.draw(st.integers(1, 300))},
            "nums": {"type": "range", "ranges": ranges},
        },
        "tables": {
            "a": {"kind": "sharded", "column": "k", "vindex": "ring"},
            "b": {"column": "k", "vindex": "hash", "column_type": "TEXT"},
            "c": {"kind": "sharded", "column": "n", "vindex": "nums", "column_type": "INT"},
            "d": {"kind": "sharded", "column": "k", "vindex": {"type": "consistent_hash"}},
            "e": {
                "kind": "sharded",
                "column": "k",
                "vindex": {"type": "consistent_hash", "virtual_nodes": 7},
            },
            "f": {"kind": "reference"},
            "g": {"kind": "unsharded"},
        },
    }


@settings(deadline=None, max_examples=40)
@given(st.data())
def test_round_trip_random(data: st.DataObject) -> None:
    vs = vschema.from_dict(_random_vschema(data))
    as_dict = vs.to_dict()
    again = vschema.from_dict(as_dict)
    assert again == vs and again.to_dict() == as_dict
    assert again.shards == vs.shards
    assert {n: (t.kind, t.vindex, t.shard) for n, t in again.tables.items()} == {
        n: (t.kind, t.vindex, t.shard) for n, t in vs.tables.items()
    }
    assert again.table("g").shard == vs.default_shard


def test_round_trip_through_toml(tmp_path: Path) -> None:
    """Rendering to_dict() as TOML by hand and loading it gives the same VSchema."""
    vs = vschema.load(QUICKSTART)
    text = QUICKSTART.read_text()
    path = tmp_path / "copy.toml"
    path.write_text(text)
    assert vschema.load(path) == vs


def test_builder_api_mirrors_reference() -> None:
    vs = create_vschema(
        {
            "users": sharded_table("tenant_id", hash_vindex(), column_type="INTEGER"),
            "orders": sharded_table("tenant_id", "hash", column_type="INTEGER"),
            "sessions": sharded_table("tenant_id", consistent_hash_vindex(64)),
            "events": sharded_table(
                "event_date",
                range_vindex(
                    [
                        {"shard": "events-2025", "min": "2025-01-01", "max": "2026-01-01"},
                        {"shard": "events-2026", "min": "2026-01-01", "max": "2027-01-01"},
                    ]
                ),
            ),
            "countries": reference_table(),
            "currencies": reference_table(),
            "system_config": unsharded_table("shard-0"),
        },
        [
            shard("shard-0", metadata={"region": "us-west"}, key_range="-40"),
            shard("shard-1", metadata={"region": "us-east"}, key_range="80-c0"),
            shard("events-2025", key_range="40-80"),
            shard("events-2026", key_range=KeyRange.parse("c0-")),
        ],
        default_shard="shard-1",
        settings={"max_parallel_shards": 4, "shard_timeout_ms": 5000, "enable_caching": False},
    )
    assert vs.default_shard == "shard-1"
    assert vs.settings == Settings(4, 5000, False)
    assert vs.shard_for("events", "2026-02-03") == "events-2026"
    assert vs.shard_for("users", 42) == vs.shard_for("orders", "42")
    assert vs.shard("shard-1").key_range == KeyRange(0x80 << 56, 0xC0 << 56)
    assert vs.table("sessions").vindex == ConsistentHashVindex(64)
    assert vschema.from_dict(vs.to_dict()) == vs


def test_builder_and_toml_agree() -> None:
    toml_vs = vschema.load(QUICKSTART)
    built = create_vschema(
        {"users": sharded_table("tenant_id", hash_vindex(), column_type="INTEGER")},
        [shard(f"shard-{i}") for i in range(4)],
    )
    for key in [*range(100), "abc", 3.5, b"\x00"]:
        assert built.shard_for("users", key) == toml_vs.shard_for("users", key)
        assert built.keyspace_id("users", key) == toml_vs.keyspace_id("users", key)


def test_with_table_and_with_addresses() -> None:
    vs = vschema.load(QUICKSTART)
    added = vs.with_table("Audit", unsharded_table("shard-2"))
    assert added.table("audit").shard == "shard-2" and not vs.has_table("audit")
    replaced = added.with_table("users", reference_table())
    assert replaced.table("users").kind == "reference"
    assert vs.table("users").kind == "sharded"
    assert not replaced.key_ranges_explicit  # still an even split after deriving
    urls = {"shard-0": "ws://127.0.0.1:4000", "shard-3": "ws://127.0.0.1:4003"}
    addressed = vs.with_addresses(urls)
    assert addressed.shard("shard-0").address == urls["shard-0"]
    assert addressed.shard("shard-1").address is None
    assert vs.shard("shard-0").address is None
    assert vschema.from_dict(addressed.to_dict()).shard("shard-3").address == urls["shard-3"]
    for key in range(50):
        assert addressed.shard_for("sessions", key) == vs.shard_for("sessions", key)
    with pytest.raises(NotFoundError):
        vs.with_addresses({"shard-9": "ws://x"})


def test_defaults_when_no_shards_given() -> None:
    vs = vschema.from_dict({"tables": {"t": {"column": "id"}}})
    assert vs.shard_ids == ("shard-0", "shard-1", "shard-2", "shard-3")
    vs = vschema.from_dict({}, default_shard_count=16)
    assert len(vs.shards) == 16 and vs.default_shard == "shard-0"
    vs = vschema.from_dict({"shard_count": 2})
    assert vs.shard_ids == ("shard-0", "shard-1")
    assert isinstance(
        vschema.from_dict({"tables": {"t": {"column": "x"}}}).table("t").vindex, HashVindex
    )


def test_toml_dates_as_range_bounds(tmp_path: Path) -> None:
    path = tmp_path / "dates.toml"
    path.write_text(
        "shard_count = 2\n"
        "[tables.events]\n"
        'column = "day"\n'
        'vindex = { type = "range", ranges = [\n'
        '  { shard = "shard-0", min = 2024-01-01, max = 2025-01-01 },\n'
        '  { shard = "shard-1", min = 2025-01-01 },\n'
        "] }\n"
    )
    vs = vschema.load(path)
    assert vs.shard_for("events", "2024-07-01") == "shard-0"
    assert vs.shard_for("events", "2099-07-01") == "shard-1"
    assert vs.to_dict()["tables"]["events"]["vindex"]["ranges"][0]["min"] == "2024-01-01"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "dosql.cli", "vschema", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_cli_prints_routing_table() -> None:
    proc = run_cli("--file", "examples/quickstart/vschema.toml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in (
        "users",
        "sharded",
        "tenant_id",
        "consistent_hash",
        "system_config",
        "unsharded",
        "countries",
        "reference",
        "['2025-01-01', '2026-01-01') -> shard-1",
        "0x4000000000000000..0x7fffffffffffffff",
        "region=us-east",
    ):
        assert needle in out, needle
    shard_lines = [line.split() for line in out.splitlines() if line.startswith("  shard-")]
    assert [(cells[0], cells[1]) for cells in shard_lines] == [
        ("shard-0", "-40"),
        ("shard-1", "40-80"),
        ("shard-2", "80-c0"),
        ("shard-3", "c0-"),
    ]
    users = next(line.split() for line in out.splitlines() if line.startswith("  users "))
    assert users[:4] == ["users", "sharded", "tenant_id", "INTEGER"]


def test_cli_reads_deployment_config(tmp_path: Path) -> None:
    proc = run_cli("--file", "examples/quickstart/dosql.toml")
    assert proc.returncode == 0, proc.stderr
    assert "system_config" in proc.stdout and "shard-3" in proc.stdout
    inline = tmp_path / "dosql.toml"
    inline.write_text(
        'log_level = "info"\n[vschema]\nshard_count = 2\n[vschema.tables.t]\ncolumn = "id"\n'
    )
    proc = run_cli("--file", str(inline))
    assert proc.returncode == 0, proc.stderr
    assert "shard-1" in proc.stdout and "shard-2" not in proc.stdout


def test_cli_reports_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[tables.users]\nkind = "sharded"\ncolumn = "id"\nvindex = "nope"\n')
    proc = run_cli("--file", str(bad))
    assert proc.returncode == 3  # an unusable input file (dosql.exitcodes)
    assert "INVALID_VSCHEMA" in proc.stderr and "nope" in proc.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[[shards]\n")
    proc = run_cli("--file", str(broken))
    assert proc.returncode == 3 and str(broken) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_routing_table_function() -> None:
    text = vschema.routing_table(vschema.from_dict({"shard_count": 3}))
    assert "Shards (3, even split)" in text and "Tables (0)" in text
    assert len([line for line in text.splitlines() if line.startswith("  shard-")]) == 3


def test_with_table_accepts_equal_named_vindex_from_another_load() -> None:
    vs, other = vschema.load(QUICKSTART), vschema.load(QUICKSTART)
    copy = vs.with_table("users_archive", other.table("users"))
    assert copy.table("users_archive").vindex_name == "tenant"
    assert copy.shard_for("users_archive", 5) == vs.shard_for("users", 5)
    import dataclasses

    from dosql.errors import ValidationError

    mismatched = dataclasses.replace(other.table("users"), vindex=consistent_hash_vindex())
    with pytest.raises(ValidationError) as info:
        vs.with_table("x", mismatched)
    assert "'tenant'" in info.value.message
    with pytest.raises(ValidationError):
        vs.with_table("x", "not a table")  # type: ignore[arg-type]


def test_auto_increment_round_trips_through_builders_toml_and_back() -> None:
    V = vschema

    table = V.sharded_table("id", V.hash_vindex(), auto_increment=V.AutoIncrement("id", "item_seq"))
    vs = V.create_vschema({"items": table}, [V.shard("s0"), V.shard("s1")])
    again = V.from_dict(vs.to_dict())
    assert again.tables["items"].auto_increment == V.AutoIncrement("id", "item_seq")
    with pytest.raises(Exception, match="auto_increment is for sharded tables"):
        V.create_vschema(
            {"r": replace(V.reference_table(), auto_increment=V.AutoIncrement("id", "s"))},
            [V.shard("s0")],
        )
