"""Every kind of bad VSchema fails at load with INVALID_VSCHEMA naming the offender."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vschema
from dosql.errors import ConfigurationError, ValidationError

FOUR = [{"id": f"shard-{i}"} for i in range(4)]


def base(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"shards": [dict(s) for s in FOUR], "tables": {}}
    data.update(extra)
    return data


CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "unknown vindex": (
        base(tables={"users": {"kind": "sharded", "column": "id", "vindex": "nope"}}),
        ["users", "nope"],
    ),
    "unknown vindex type": (
        base(vindexes={"v": {"type": "lookup"}}),
        ["'v'", "lookup"],
    ),
    "unknown vindex parameter": (
        base(vindexes={"v": {"type": "hash", "seed": 3}}),
        ["'v'", "seed"],
    ),
    "bad virtual_nodes": (
        base(vindexes={"ring": {"type": "consistent_hash", "virtual_nodes": 0}}),
        ["'ring'", "virtual_nodes"],
    ),
    "unknown shard in range": (
        base(
            vindexes={
                "by_year": {
                    "type": "range",
                    "ranges": [{"shard": "shard-9", "min": "2024", "max": "2025"}],
                }
            }
        ),
        ["by_year", "shard-9"],
    ),
    "unknown shard for unsharded table": (
        base(tables={"config": {"kind": "unsharded", "shard": "shard-7"}}),
        ["config", "shard-7"],
    ),
    "unknown default shard": (base(default_shard="shard-5"), ["default_shard", "shard-5"]),
    "duplicate shard ids": (
        base(shards=[{"id": "a"}, {"id": "b"}, {"id": "a"}]),
        ["duplicate", "'a'"],
    ),
    "overlapping key ranges": (
        base(
            shards=[
                {"id": "a", "key_range": "-80"},
                {"id": "b", "key_range": "40-"},
            ]
        ),
        ["overlap", "'a'", "'b'"],
    ),
    "gapped key ranges": (
        base(
            shards=[
                {"id": "a", "key_range": "-40"},
                {"id": "b", "key_range": "80-"},
            ]
        ),
        ["gap", "'a'", "'b'", "40-80"],
    ),
    "key ranges not covering the end": (
        base(shards=[{"id": "a", "key_range": "-40"}, {"id": "b", "key_range": "40-c0"}]),
        ["gap", "'b'", "c0-"],
    ),
    "key range on some shards only": (
        base(shards=[{"id": "a", "key_range": "-80"}, {"id": "b"}]),
        ["b", "key_range"],
    ),
    "bad key range notation": (
        base(shards=[{"id": "a", "key_range": "zz-"}]),
        ["'a'", "zz"],
    ),
    "overlapping value ranges": (
        base(
            vindexes={
                "by_year": {
                    "type": "range",
                    "ranges": [
                        {"shard": "shard-0", "min": "2024-01-01", "max": "2025-06-01"},
                        {"shard": "shard-1", "min": "2025-01-01", "max": "2026-01-01"},
                    ],
                }
            }
        ),
        ["by_year", "overlap", "2025-01-01"],
    ),
    "open value ranges overlapping": (
        base(
            tables={
                "m": {
                    "column": "v",
                    "vindex": {
                        "type": "range",
                        "ranges": [{"shard": "shard-0", "max": 10}, {"shard": "shard-1"}],
                    },
                }
            }
        ),
        ["'m'", "overlap"],
    ),
    "empty value range": (
        base(
            vindexes={"r": {"type": "range", "ranges": [{"shard": "shard-0", "min": 5, "max": 5}]}}
        ),
        ["'r'", "empty"],
    ),
    "mixed value range types": (
        base(
            vindexes={
                "r": {
                    "type": "range",
                    "ranges": [
                        {"shard": "shard-0", "min": 1, "max": 5},
                        {"shard": "shard-1", "min": "5", "max": "9"},
                    ],
                }
            }
        ),
        ["'r'", "mix"],
    ),
    "range vindex without ranges": (
        base(vindexes={"r": {"type": "range", "ranges": []}}),
        ["'r'", "at least one range"],
    ),
    "sharded table without column": (
        base(tables={"orders": {"kind": "sharded", "vindex": "hash"}}),
        ["orders", "column"],
    ),
    "sharded table naming a shard": (
        base(tables={"orders": {"kind": "sharded", "column": "id", "shard": "shard-0"}}),
        ["orders", "one shard"],
    ),
    "reference table with a column": (
        base(tables={"countries": {"kind": "reference", "column": "code"}}),
        ["countries", "reference"],
    ),
    "bad kind": (base(tables={"t1": {"kind": "replicated"}}), ["t1", "replicated"]),
    "missing kind": (base(tables={"t1": {"column_type": "TEXT"}}), ["t1", "kind"]),
    "bad default_table": (base(default_table="guess"), ["default_table", "guess"]),
    "unknown top-level key": (base(tabels={}), ["tabels"]),
    "unknown table key": (
        base(tables={"users": {"kind": "sharded", "column": "id", "colum_type": "INT"}}),
        ["users", "colum_type"],
    ),
    "unknown shard key": (base(shards=[{"id": "a", "region": "eu"}]), ["'a'", "region"]),
    "duplicate table names": (
        base(tables={"Users": {"kind": "reference"}, "users": {"kind": "reference"}}),
        ["users", "twice"],
    ),
    "shards and shard_count": (base(shard_count=4), ["shard_count"]),
    "bad shard_count": ({"shard_count": 0}, ["shard_count"]),
    "bad shard id": (base(shards=[{"id": "../etc"}]), ["../etc"]),
    "bad settings value": (base(settings={"max_parallel_shards": 0}), ["max_parallel_shards"]),
    "unknown setting": (base(settings={"parallelism": 2}), ["parallelism"]),
    "bad column_type": (
        base(tables={"users": {"kind": "sharded", "column": "id", "column_type": 5}}),
        ["users", "column_type"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_vschema(case: str) -> None:
    data, needles = CASES[case]
    with pytest.raises(ValidationError) as info:
        vschema.from_dict(data, source="test.toml")
    assert info.value.code == "INVALID_VSCHEMA"
    message = info.value.message
    assert message.startswith("test.toml")
    for needle in needles:
        assert needle in message, (needle, message)


def test_builder_validates_too() -> None:
    with pytest.raises(ValidationError) as info:
        vschema.create_vschema(
            {"config": vschema.unsharded_table("shard-9")}, [vschema.shard("shard-0")]
        )
    assert info.value.code == "INVALID_VSCHEMA"
    assert "shard-9" in info.value.message and "config" in info.value.message
    with pytest.raises(ValidationError) as info:
        vschema.create_vschema(
            {"e": vschema.sharded_table("d", vschema.range_vindex([{"shard": "x", "min": 1}]))},
            [vschema.shard("shard-0")],
        )
    assert "'x'" in info.value.message
    with pytest.raises(ValidationError):
        vschema.create_vschema({}, [])
    with pytest.raises(ValidationError):
        vschema.create_vschema({}, [vschema.shard("a")], settings={"bogus": 1})


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[tables.users\nkind = "sharded"\n')
    with pytest.raises(ConfigurationError) as info:
        vschema.load(path)
    assert str(path) in info.value.message
    assert info.value.code == "INVALID_CONFIG"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        vschema.load(tmp_path / "nope.toml")
    assert "nope.toml" in info.value.message
    assert info.value.code == "MISSING_CONFIG"


def test_validation_error_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vs.toml"
    path.write_text('[tables.users]\nkind = "sharded"\nvindex = "hash"\n')
    with pytest.raises(ValidationError) as info:
        vschema.load(path)
    assert str(path) in info.value.message and "users" in info.value.message
