"""SQLite type affinity and canonical encoding, checked against SQLite itself."""

from __future__ import annotations

import math
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dosql.errors import ValidationError
from vschema.values import (
    Affinity,
    affinity_of,
    apply_affinity,
    encode,
    key_value,
    sqlite_real_text,
)

DECLARED_TYPES = [
    "INTEGER",
    "INT",
    "BIGINT",
    "TEXT",
    "VARCHAR(20)",
    "CLOB",
    "BLOB",
    "",
    "REAL",
    "DOUBLE PRECISION",
    "FLOAT",
    "NUMERIC",
    "DECIMAL(10,2)",
    "BOOLEAN",
    "DATE",
]

_DB = sqlite3.connect(":memory:")
for _i, _t in enumerate(DECLARED_TYPES):
    _DB.execute(f"CREATE TABLE t{_i} (c {_t})")


def sqlite_stores(value: object, column_type: str) -> object:
    """What SQLite really stores for ``value`` in a column of ``column_type``."""
    table = f"t{DECLARED_TYPES.index(column_type)}"
    _DB.execute(f"DELETE FROM {table}")
    _DB.execute(f"INSERT INTO {table} VALUES (?)", (value,))
    return _DB.execute(f"SELECT c FROM {table}").fetchone()[0]


numeric_text = st.text(alphabet=" 0123456789.eE+-x\t", max_size=8)
values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda f: round(f, 2)),
    numeric_text,
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.booleans(),
)


def same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


@settings(deadline=None, max_examples=400)
@given(values, st.sampled_from(DECLARED_TYPES))
def test_apply_affinity_matches_sqlite(value: object, column_type: str) -> None:
    expected = sqlite_stores(value, column_type)
    got = apply_affinity(value, column_type)
    assert same(got, expected), (value, column_type, got, expected)


@settings(deadline=None, max_examples=200)
@given(st.floats(allow_nan=False))
def test_real_text_matches_sqlite_cast(value: float) -> None:
    (expected,) = _DB.execute("SELECT CAST(? AS TEXT)", (value,)).fetchone()
    assert sqlite_real_text(value) == expected


@pytest.mark.parametrize(
    ("column_type", "affinity"),
    [
        ("INTEGER", Affinity.INTEGER),
        ("unsigned big int", Affinity.INTEGER),
        ("NVARCHAR(10)", Affinity.TEXT),
        ("clob", Affinity.TEXT),
        ("BLOB", Affinity.BLOB),
        ("", Affinity.BLOB),
        ("DOUBLE", Affinity.REAL),
        ("FLOAT", Affinity.REAL),
        ("DECIMAL(10,5)", Affinity.NUMERIC),
        ("DATETIME", Affinity.NUMERIC),
        (None, Affinity.NUMERIC),
        ("CHARINT", Affinity.INTEGER),  # INT wins: SQLite checks it first
    ],
)
def test_affinity_rules(column_type: str | None, affinity: Affinity) -> None:
    assert affinity_of(column_type) is affinity


@settings(deadline=None, max_examples=200)
@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_integer_column_is_type_stable(n: int) -> None:
    for column_type in ("INTEGER", "NUMERIC", None):
        variants = {encode(apply_affinity(v, column_type)) for v in (n, float(n), str(n))}
        variants.add(encode(apply_affinity(f" {n}.0 ", column_type)))
        assert len(variants) == 1, (n, column_type)


@settings(deadline=None, max_examples=200)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_text_column_uses_sqlite_text_of_numbers(n: int) -> None:
    assert encode(apply_affinity(n, "TEXT")) == encode(str(n))
    assert apply_affinity(float(42), "TEXT") == "42.0"


def test_specific_conversions() -> None:
    assert apply_affinity("42.5", "INTEGER") == 42.5
    assert apply_affinity("abc", "INTEGER") == "abc"
    assert apply_affinity("3.0e5", "INTEGER") == 300000
    assert apply_affinity(42, "REAL") == 42.0 and isinstance(apply_affinity(42, "REAL"), float)
    assert apply_affinity("42", "BLOB") == "42"
    assert apply_affinity(True, "INTEGER") == 1
    assert encode(True) == encode(1)
    assert encode(-0.0) == encode(0.0) == encode(0)
    assert encode("42") != encode(42) != encode(b"42")
    assert encode(1.5) == b"r" + bytes.fromhex("3ff8000000000000")
    assert encode(42) == b"i" + (42).to_bytes(8, "big", signed=True)


def test_null_key_is_refused() -> None:
    for null in (None, float("nan")):
        with pytest.raises(ValidationError) as info:
            key_value(null, "INTEGER", table="users", column="tenant_id")
        assert info.value.code == "SHARDING_KEY_NULL"
        assert "users.tenant_id" in info.value.message


def test_unsupported_types_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        apply_affinity(object(), "INTEGER")
    assert info.value.code == "INVALID_INPUT"
    with pytest.raises(ValidationError):
        apply_affinity(2**64, "INTEGER")


@pytest.mark.parametrize(
    "text", ["0" * 5000 + "42", "-000042", "9" * 5000, "1" * 100_000 + "x", "1" * 200_000 + ".5"]
)
def test_huge_numeric_text_converts_like_sqlite_quickly(text: str) -> None:
    assert same(apply_affinity(text, "INTEGER"), sqlite_stores(text, "INTEGER"))
