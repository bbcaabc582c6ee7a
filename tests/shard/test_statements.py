"""Statement classification used by the shard's autocommit fast path: only reads skip it."""

from __future__ import annotations

import pytest

from dosql.statements import kind


@pytest.mark.parametrize(
    ("sql", "is_read"),
    [
        ("SELECT 1", True),
        ("select * from t", True),
        ("  -- a comment\n/* block */ SELECT(1)", True),
        ("SELECT", True),
        ("VALUES (1), (2)", True),
        ("WITH a AS (SELECT 1) SELECT * FROM a", True),
        ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", False),
        ("selection", False),
        ("SELECT_x", False),
        ("INSERT INTO t SELECT 1", False),
        ("/* unterminated", False),
        ("", False),
    ],
)
def test_only_reads_are_select(sql: str, is_read: bool) -> None:
    assert (kind(sql) == "select") is is_read
