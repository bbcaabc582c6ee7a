"""``dosql sql --url URL [--token T] [--json] "SQL"``: run one statement, print the result.

For operators and scripts: a table (like the sqlite3 shell's box-less mode)
for people, ``--json`` for programs. Bytes print as ``X'hex'`` in the table
and as ``{"hex": "..."}`` in JSON, since JSON has no binary type. The token
defaults to the ``DOSQL_TOKEN`` environment variable, so it need not appear
in shell history; without ``--url`` (or ``DOSQL_URL``) the router is found
from ``.dosql-data/cluster.toml`` (:mod:`dosql.discovery`). Exit status: 0 on
success, 1 when the statement fails, 2 when the connection does (the error
code and message go to stderr; :mod:`dosql.exitcodes`). ``dosql shell`` runs
many statements, interactively or from a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from dosql import discovery, driver, exitcodes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sql", help="one SQL statement")
    parser.add_argument(
        "--url",
        help="router address as printed by `dosql up`, e.g. dosql://127.0.0.1:7000 "
        "(default: env DOSQL_URL, else .dosql-data/cluster.toml)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token (env DOSQL_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="statement timeout in seconds (default 30)"
    )


def run(args: argparse.Namespace) -> int:
    target = discovery.resolve("router", url=args.url, token=args.token)
    try:
        conn = driver.connect(target.url, token=target.token, timeout=args.timeout, autocommit=True)
    except driver.Error as exc:
        print(f"dosql sql: error: {exc}", file=sys.stderr)
        return exitcodes.for_error(exc, connecting=True)
    try:
        cur = conn.cursor().execute(args.sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall() if cur.description else []
        result = result_json(columns, rows, cur.rowcount, cur.lastrowid)
    except driver.Error as exc:
        print(f"dosql sql: error: {exc}", file=sys.stderr)
        return exitcodes.for_error(exc)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(result, default=json_value))
    else:
        print(format_table(columns, rows, result["rowcount"]))
    return exitcodes.OK


def result_json(
    columns: list[str], rows: list[tuple[Any, ...]], rowcount: int, lastrowid: int | None
) -> dict[str, Any]:
    """One statement's outcome as the JSON object ``--json`` prints."""
    return {
        "columns": columns,
        "rows": [list(r) for r in rows],
        "rowcount": rowcount,
        "lastrowid": lastrowid,
    }


def format_table(columns: list[str], rows: list[tuple[Any, ...]], rowcount: int) -> str:
    """Aligned columns with a header rule, then a row count (or rows affected).

    A statement without rows prints ``OK``, with the rows it changed when the
    server counted any (DDL reports -1: nothing to say).
    """
    if not columns:
        if rowcount < 0:
            return "OK"
        return f"OK ({rowcount} row{'s' if rowcount != 1 else ''} affected)"
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(columns))
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [line(list(columns)), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"X'{value.hex().upper()}'"
    return str(value)


def json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
