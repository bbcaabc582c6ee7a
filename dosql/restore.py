"""``dosql restore-table``: materialise a table's past state into a new table.

Point-in-time recovery without touching the original: everything goes through
the router (the same path as any client), so the new table is placed by the
VSchema like any other and its rows stream to the lake as usual.

1. ``SELECT sql FROM dosql_table_sql('T', 'AS-OF')`` -- the router reads the
   table's ``CREATE TABLE`` text as it was at that point from the lake's
   change log (so a table dropped and recreated since gets its *old*
   definition back); the name in it is replaced by the new one, token-exact,
   and the statement runs;
2. ``SELECT * FROM T FOR SYSTEM_TIME AS OF TIMESTAMP ?`` -- the rows;
3. ``INSERT INTO new (columns) VALUES (?, …)`` in batches, one transaction
   per batch, reporting progress (a rich progress bar on a terminal, plain
   lines on stderr otherwise).

The new table must not exist (CREATE TABLE fails otherwise, before any row
is written). If an insert batch fails, the rows of the earlier batches stay:
the error says how many, so the table can be dropped and the restore rerun.

Python: :func:`restore_table` (``progress(done, total)`` is called after
each batch). CLI: ``dosql restore-table --url dosql://h:p --table T
--as-of '2026-01-20 14:30:00' --into T_recovered [--token …]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlglot.tokens import TokenType

from dosql import driver
from dosql.errors import QueryError, ValidationError
from dosql.timetravel import DIALECT, parse_timestamp
from dosql.timetravel.points import format_micros

DEFAULT_BATCH = 500


@dataclass(frozen=True)
class RestoreResult:
    table: str
    into: str
    as_of: str  # the point, normalised to UTC
    rows: int
    create_sql: str


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def rename_create(create_sql: str, new_name: str) -> str:
    """``create_sql`` with the created table's name replaced by ``new_name``.

    Only the name's tokens change (found with the SQL tokenizer, not a
    regex), so the rest of the definition -- types, constraints, collations,
    WITHOUT ROWID -- is byte for byte the original.
    """
    tokens = DIALECT.tokenize(create_sql)
    i = 0
    skip = {TokenType.CREATE, TokenType.TEMPORARY, TokenType.TABLE}
    while i < len(tokens) and (
        tokens[i].token_type in skip or tokens[i].text.upper() in ("TEMP", "IF", "NOT", "EXISTS")
    ):
        i += 1
    if i >= len(tokens) or i == 0:
        raise QueryError(f"not a CREATE TABLE statement: {create_sql[:80]!r}", code="QUERY_ERROR")
    first = last = i
    # schema.name: keep only the table name, in the schema the router uses
    while last + 2 < len(tokens) and tokens[last + 1].token_type == TokenType.DOT:
        last += 2
    start, end = tokens[first].start, tokens[last].end + 1
    return create_sql[:start] + _quote(new_name) + create_sql[end:]


def restore_table(
    url: str,
    table: str,
    as_of: str,
    into: str,
    token: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    batch: int = DEFAULT_BATCH,
    timeout: float = 120.0,
) -> RestoreResult:
    """Create ``into`` with ``table``'s definition as of ``as_of`` and fill it with
    the rows ``table`` had then. Returns what was done; raises dosql.driver errors."""
    if not table or not into:
        raise ValidationError("restore-table needs --table and --into", code="INVALID_INPUT")
    if table.lower() == into.lower():
        raise ValidationError(
            f"--into must name a new table, not {table} itself: restore into a new table, "
            "check it, then swap names",
            code="INVALID_INPUT",
        )
    micros = parse_timestamp(as_of)  # malformed -> ValidationError before any work
    point = format_micros(micros)
    conn = driver.connect(url, token=token, timeout=timeout, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT sql FROM dosql_table_sql({_literal(table)}, {_literal(as_of)})")
        found = cur.fetchone()
        if not found or not found[0]:
            raise QueryError(f"no definition of {table} as of {point}", code="QUERY_ERROR")
        create = rename_create(str(found[0]), into)
        cur.execute(f"SELECT * FROM {_quote(table)} FOR SYSTEM_TIME AS OF TIMESTAMP ?", [as_of])
        source_cols = [d[0] for d in cur.description or ()]
        rows = cur.fetchall()
        cur.execute(create)
        cur.execute(f"SELECT * FROM {_quote(into)} LIMIT 0")
        target_cols = [d[0] for d in cur.description or ()]
        wanted = {c.lower() for c in target_cols}
        keep = [i for i, c in enumerate(source_cols) if c.lower() in wanted]
        cols = [source_cols[i] for i in keep]
        total = len(rows)
        if progress is not None:
            progress(0, total)
        if cols and rows:
            sql = (
                f"INSERT INTO {_quote(into)} ({', '.join(_quote(c) for c in cols)}) "
                f"VALUES ({', '.join('?' * len(cols))})"
            )
            conn.autocommit = False
            done = 0
            for start in range(0, total, batch):
                chunk = [tuple(row[i] for i in keep) for row in rows[start : start + batch]]
                try:
                    cur.executemany(sql, chunk)
                    conn.commit()
                except driver.Error as exc:
                    _rollback(conn)
                    raise type(exc)(
                        f"{exc.message} (restore into {into} stopped after {done} of {total} "
                        f"rows; DROP TABLE {into} and rerun)",
                        code=exc.code,
                        category=exc.category,
                        details=exc.details,
                    ) from exc
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        return RestoreResult(table, into, point, total, create)
    finally:
        conn.close()


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except driver.Error:
        pass


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="router address, e.g. dosql://127.0.0.1:7000 "
        "(default: env DOSQL_URL, else .dosql-data/cluster.toml)",
    )
    parser.add_argument("--table", required=True, help="the table whose past state to restore")
    parser.add_argument(
        "--as-of",
        required=True,
        dest="as_of",
        help="the point in time, e.g. '2026-01-20 14:30:00' (UTC unless a zone is given)",
    )
    parser.add_argument("--into", required=True, help="the NEW table to create and fill")
    parser.add_argument(
        "--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token (env DOSQL_TOKEN)"
    )
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help=f"rows per INSERT batch ({DEFAULT_BATCH})"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per statement")


def _reporter() -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress callback (rich bar on a terminal, lines on stderr otherwise)."""
    if sys.stderr.isatty():
        try:
            from rich.console import Console
            from rich.progress import Progress
        except ImportError:
            pass
        else:
            bar = Progress(console=Console(stderr=True))
            bar.start()
            task = bar.add_task("restoring", total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return update, bar.stop

    def line(done: int, total: int) -> None:
        print(f"restore-table: {done}/{total} rows", file=sys.stderr, flush=True)

    return line, lambda: None


def run(args: argparse.Namespace) -> int:
    from dosql import discovery, exitcodes

    target = discovery.resolve("router", url=args.url, token=args.token)
    update, stop = _reporter()
    try:
        result = restore_table(
            target.url,
            args.table,
            args.as_of,
            args.into,
            token=target.token,
            progress=update,
            batch=max(1, args.batch),
            timeout=args.timeout,
        )
    except (driver.Error, ValidationError, QueryError) as exc:
        stop()
        print(f"dosql restore-table: error: {exc}", file=sys.stderr)
        return exitcodes.for_error(exc)
    stop()
    print(f"restored {result.rows} rows of {result.table} as of {result.as_of} into {result.into}")
    return 0
