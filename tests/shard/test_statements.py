"""Statement classification used by the shard's autocommit fast path."""

from __future__ import annotations

import pytest

from dosql.shard.executor import is_select


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", True),
        ("select * from t", True),
        ("  -- a comment\n/* block */ SELECT(1)", True),
        ("SELECT", True),
        ("selection", False),
        ("SELECT_x", False),
        ("WITH a AS (SELECT 1) SELECT * FROM a", False),  # WITH may lead to a write
        ("INSERT INTO t SELECT 1", False),
        ("/* unterminated", False),
        ("", False),
    ],
)
def test_is_select(sql: str, expected: bool) -> None:
    assert is_select(sql) is expected
