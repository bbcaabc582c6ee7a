"""A statement's text, tokens, parameters and AST, and the AST questions every planner asks.

Kept apart from :mod:`dosql.router.planner` so the modules the planner builds
on (router-side gathering, partial aggregation, router-side DML, sequences)
can read statements without importing the planner back.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from dosql.errors import NotFoundError, NotSupportedError, QueryError
from dosql.router import sqltext
from dosql.router.plan import Value

_INT = re.compile(r"[0-9]+")


def _refuse(what: str) -> NotSupportedError:
    return NotSupportedError(what)


def _refuse_trigger(words: list[str]) -> None:
    """CREATE [TEMP] TRIGGER is refused before anything else looks at its text.

    A trigger body holds ``;``-separated statements, so the one-statement check
    would otherwise answer with a misleading "one statement at a time" error.
    Triggers are refused because a trigger on one shard sees that shard's rows
    only (and the shards' change capture owns the tables' triggers).
    """
    if words[:1] == ["CREATE"] and "TRIGGER" in words[1:3]:
        raise _refuse(
            "CREATE TRIGGER through the router: a trigger would run on each shard over that "
            "shard's rows only; put the logic in the application or a change-stream consumer"
        )


class Statement:
    """A statement's text, tokens, parameters and AST."""

    def __init__(self, sql: str) -> None:
        text = sql.strip()
        toks = sqltext.tokenize(text)
        while toks and toks[-1].type == TokenType.SEMICOLON:
            toks.pop()
        if not toks:
            raise QueryError("empty statement: nothing to execute", code="SYNTAX_ERROR")
        text = text[: toks[-1].end]
        _refuse_trigger([t.text.upper() for t in toks[:3]])
        if any(t.type == TokenType.SEMICOLON for t in toks):
            raise QueryError("you can only execute one statement at a time", code="QUERY_ERROR")
        if toks[0].text.upper() == "REPLACE":  # REPLACE INTO == INSERT OR REPLACE INTO
            text = "INSERT OR " + text
            toks = sqltext.tokenize(text)
        self.text = text
        self.toks = toks
        self.words = [t.text.upper() for t in toks]
        self.params = sqltext.find_params(text, toks)
        self._ast: exp.Expression | None = None
        self.views: dict[str, str] = {}

    @property
    def ast(self) -> exp.Expression:
        if self._ast is None:
            self._ast = _parse(self.text, sqltext.numbered_text(self.text, self.toks, self.params))
        return self._ast

    def spans_params(self, spans: list[tuple[int, int]]) -> tuple[int, ...] | None:
        if not self.params.positional:
            return None
        out: list[int] = []
        for span in spans:
            out.extend(sqltext.positional_in(self.params, self.toks, [span]))
        return tuple(out)


def _parse(original: str, numbered: str) -> exp.Expression:
    try:
        tree = sqlglot.parse(numbered, read="sqlite")
    except sqlglot.errors.ParseError as exc:
        _syntax_check(original)
        raise _refuse(
            f"the router's SQL parser cannot handle this statement ({_first_line(exc)})"
        ) from None
    trees = [t for t in tree if t is not None]
    if len(trees) != 1:
        raise QueryError("you can only execute one statement at a time", code="QUERY_ERROR")
    return trees[0]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _syntax_check(sql: str) -> None:
    """Raise SYNTAX_ERROR if SQLite itself rejects the text as malformed."""
    con = sqlite3.connect(":memory:")
    try:
        con.execute("EXPLAIN " + sql)
    except sqlite3.Error as exc:
        msg = str(exc)
        if "syntax error" in msg or "incomplete input" in msg or "unrecognized token" in msg:
            raise QueryError(msg, code="SYNTAX_ERROR") from None
    finally:
        con.close()


def value_of(node: exp.Expression | None) -> Value | None:
    """A pinnable value: literal or parameter; None for anything else."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Placeholder):
        name = str(node.this or "")
        idx = sqltext.positional_index(name)
        return Value(param=idx if idx is not None else name) if name else None
    if isinstance(node, exp.Null):
        return Value(const=None)
    if isinstance(node, exp.Boolean):
        return Value(const=1 if node.this else 0)
    if isinstance(node, exp.HexString):
        if node.args.get("is_integer"):
            return None
        try:
            return Value(const=bytes.fromhex(str(node.this)))
        except ValueError:
            return None
    if isinstance(node, exp.Literal):
        return _literal(node, negate=False)
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        return _literal(node.this, negate=True)
    return None


def _literal(node: exp.Literal, *, negate: bool) -> Value | None:
    text = str(node.this)
    if node.is_string:
        return None if negate else Value(const=text)
    if _INT.fullmatch(text):
        n = -int(text) if negate else int(text)
        if -(2**63) <= n < 2**63:
            return Value(const=n)
        return Value(const=float(n))
    try:
        f = float(text)
    except ValueError:
        return None
    return Value(const=-f if negate else f)


def _table_name(t: exp.Table) -> str:
    db = t.args.get("db")
    if db is not None and str(db.name).lower() not in ("main", ""):
        raise _refuse(
            f"schema-qualified table {db.name}.{t.name}: only the main schema exists "
            "through the router"
        )
    return str(t.name).lower()


def _in_tables(ast: exp.Expression) -> list[exp.Table]:
    """The tables of SQLite's ``x IN tablename`` form (sqlglot parses the name as a column).

    SQLite's grammar reads ``expr IN nm`` / ``expr IN schema.nm`` as a table, never a
    column, so the statement reads that whole table: it must count as one of the
    statement's tables (a scatter would see each shard's part only).
    """
    out = []
    for node in ast.find_all(exp.In):
        field = node.args.get("field")
        if isinstance(field, exp.Column) and not isinstance(field.this, exp.Star):
            out.append(exp.Table(this=field.this.copy(), db=field.args.get("table")))
    return out


def physical_tables(ast: exp.Expression) -> list[exp.Table]:
    ctes = {str(c.alias_or_name).lower() for c in ast.find_all(exp.CTE)}
    out = []
    for t in [*ast.find_all(exp.Table), *_in_tables(ast)]:
        if not t.name:
            continue
        if not t.args.get("db") and str(t.name).lower() in ctes:
            continue
        out.append(t)
    return out


def _is_internal(name: str) -> bool:
    return name.startswith("sqlite_")


def _vs_table(vs: Any, name: str) -> Any:
    if not vs.has_table(name):
        raise NotFoundError(
            f"no such table: {name} (the VSchema does not list it and it was not created "
            "through the router)",
            code="TABLE_NOT_FOUND",
            details={"table": name},
        )
    return vs.table(name)


def _clause_starts(st: Statement, from_i: int) -> dict[TokenType, int]:
    wanted = {
        TokenType.WHERE,
        TokenType.GROUP_BY,
        TokenType.HAVING,
        TokenType.ORDER_BY,
        TokenType.LIMIT,
        TokenType.OFFSET,
        TokenType.WINDOW,
    }
    out: dict[TokenType, int] = {}
    for i in range(from_i + 1, len(st.toks)):
        t = st.toks[i]
        if t.depth == 0 and t.type in wanted and t.type not in out:
            out[t.type] = i
    return out


def _item_expr_span(st: Statement, a: int, b: int, item: exp.Expression) -> tuple[int, int]:
    """Token range of a select item without its alias."""
    if not isinstance(item, exp.Alias):
        return a, b
    depth = st.toks[a].depth
    for i in range(b - 1, a - 1, -1):
        if st.toks[i].type == TokenType.ALIAS and st.toks[i].depth == depth:
            return a, i
    return a, b - 1


def _has_params(st: Statement, span: tuple[int, int]) -> bool:
    if st.params.named:
        return any(t.type == TokenType.COLON and span[0] <= t.start < span[1] for t in st.toks)
    return bool(sqltext.positional_in(st.params, st.toks, [span]))
