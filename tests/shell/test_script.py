"""Statement splitting, parameter values and exit statuses: no cluster needed."""

from __future__ import annotations

import pytest

from dosql import driver, exitcodes
from dosql.errors import ConfigurationError, QueryError, RPCError
from dosql.shell import script
from dosql.shell_cli import value
from dosql.sql_cli import format_table


def test_split_keeps_semicolons_inside_quotes_and_comments() -> None:
    text = (
        "SELECT 'a;b', \"c;d\", [e;f], `g;h` FROM t; -- one; two\n"
        "SELECT 'it''s;'; /* x; y */ SELECT 3"
    )
    statements, rest = script.split(text)
    # a comment before a statement stays with it (the router skips it, as SQLite does)
    assert statements == [
        "SELECT 'a;b', \"c;d\", [e;f], `g;h` FROM t",
        "-- one; two\nSELECT 'it''s;'",
    ]
    assert rest.strip() == "/* x; y */ SELECT 3"
    assert script.split_all(text)[-1] == "/* x; y */ SELECT 3"
    assert script.split("SELECT 1;\n-- trailing comment\n") == (["SELECT 1"], "")
    assert script.split(";;  ;") == ([], "")
    assert script.split("SELECT\n 1") == ([], "SELECT\n 1")


def test_placeholders_outside_quotes_only() -> None:
    assert script.has_placeholders("SELECT * FROM t WHERE id = ?")
    assert script.has_placeholders("SELECT * FROM t WHERE id = :id")
    assert not script.has_placeholders("SELECT '?', ':id', \"?\" -- ?")
    assert not script.has_placeholders("SELECT time('12:30')")


def test_parameter_values() -> None:
    assert value("42") == 42 and value("-7") == -7
    assert value("2.5") == 2.5 and value("1e3") == 1000.0
    assert value("ada") == "ada" and value("") == "" and value("12ab") == "12ab"


def test_exit_status_per_failure_class() -> None:
    assert exitcodes.for_error(QueryError("bad", code="SYNTAX_ERROR")) == exitcodes.SQL_ERROR
    assert exitcodes.for_error(RPCError("down")) == exitcodes.CONNECTION_ERROR
    assert exitcodes.for_error(ConfigurationError("no url")) == exitcodes.USAGE_ERROR
    refused = driver.ProgrammingError("x", code="READ_ONLY", category="authorization")
    assert exitcodes.for_error(refused) == exitcodes.SQL_ERROR
    login = driver.OperationalError("x", code="AUTHENTICATION_REQUIRED", category="authorization")
    assert exitcodes.for_error(login) == exitcodes.CONNECTION_ERROR
    assert exitcodes.for_error(refused, connecting=True) == exitcodes.CONNECTION_ERROR
    bad_url = driver.InterfaceError("x", code="INVALID_INPUT", category="validation")
    assert exitcodes.for_error(bad_url, connecting=True) == exitcodes.USAGE_ERROR
    assert len({0, 1, 2, 3, 130, 141}) == 6


@pytest.mark.parametrize(
    ("rowcount", "text"), [(-1, "OK"), (0, "OK (0 rows affected)"), (1, "OK (1 row affected)")]
)
def test_statements_without_rows_print_ok(rowcount: int, text: str) -> None:
    assert format_table([], [], rowcount) == text
