"""`dosql sql`: one statement through the driver, printed as a table or JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import dosql.driver as dbapi
from dosql.sql_cli import format_table
from tests.driver.conftest import ROOT, Server


def dosql_sql(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dosql.cli", "sql", *args],
        cwd=ROOT,
        env={**os.environ, "DOSQL_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def people(server: Server) -> str:
    conn = dbapi.connect(server.url, autocommit=True)
    try:
        conn.cursor().execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, pic BLOB)")
        conn.cursor().executemany(
            "INSERT INTO people VALUES (?, ?, ?)", [(1, "ada", b"\x01\xff"), (22, None, None)]
        )
    finally:
        conn.close()
    return "people"


def test_table_output(server: Server, people: str) -> None:
    done = dosql_sql("--url", server.url, f"SELECT id, name, pic FROM {people} ORDER BY id")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "id | name | pic",
        "---+------+--------",
        " 1 | ada  | X'01FF'",
        "22 | NULL | NULL",
        "(2 rows)",
    ]


def test_json_output(server: Server, people: str) -> None:
    done = dosql_sql(
        "--url", server.url, "--json", f"SELECT id, name, pic FROM {people} ORDER BY id"
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["columns"] == ["id", "name", "pic"]
    assert out["rows"] == [[1, "ada", {"hex": "01ff"}], [22, None, None]]


def test_write_statement_reports_rows_affected(server: Server, people: str) -> None:
    done = dosql_sql("--url", server.url, f"UPDATE {people} SET name = 'x' WHERE id = 22")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK (1 row affected)"
    check = dosql_sql("--url", server.url, "--json", f"SELECT name FROM {people} WHERE id = 22")
    assert json.loads(check.stdout)["rows"] == [["x"]]  # committed (autocommit)


def test_errors_exit_with_their_class_and_code(server: Server) -> None:
    done = dosql_sql("--url", server.url, "SELECT * FROM nowhere")
    assert done.returncode == 1  # an SQL error (dosql.exitcodes)
    assert "TABLE_NOT_FOUND" in done.stderr and done.stdout == ""
    done = dosql_sql("--url", "dosql://127.0.0.1:1", "SELECT 1")
    assert done.returncode == 2 and "RPC_UNAVAILABLE" in done.stderr  # a connection error


def test_format_table_edge_cases() -> None:
    assert format_table(["a"], [], -1).splitlines() == ["a", "-", "(0 rows)"]
    assert format_table([], [], 0) == "OK (0 rows affected)"
    assert format_table(["x"], [(1.5,)], -1).splitlines()[2] == "1.5"
