"""``FOR SYSTEM_TIME AS OF`` on top of sqlglot's SQLite dialect.

SQLite has no temporal syntax, so :class:`DoSQLite` extends sqlglot's SQLite
dialect by one clause on table references::

    FROM t FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00' [AS] a
    FROM t [AS] a FOR SYSTEM_TIME AS OF SNAPSHOT 1234567890 | 'main@42'
    FROM t FOR SYSTEM_TIME AS OF LSN 42

(the value may also be a ``?`` or ``:name`` parameter). It is represented the
way sqlglot represents BigQuery/T-SQL time travel: an ``exp.Version`` in the
table's ``version`` arg, whose ``this`` is the kind (``TIMESTAMP``,
``SNAPSHOT`` or ``LSN``), ``kind`` is ``"AS OF"`` and ``expression`` the
literal or placeholder. Everything else is SQLite's parser unchanged: a
statement without the clause parses exactly as with ``read="sqlite"``.

The router uses :func:`temporal_refs` to learn which table references are
historical and :func:`strip` to replace each of them by a plain reference to
a table it has loaded with the historical rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite
from sqlglot.errors import ParseError, TokenError
from sqlglot.generators.sqlite import SQLiteGenerator
from sqlglot.parsers.sqlite import SQLiteParser
from sqlglot.tokens import TokenType

from dosql.errors import QueryError
from dosql.timetravel import points

Kind = Literal["timestamp", "snapshot", "lsn"]
_KINDS = ("TIMESTAMP", "SNAPSHOT", "LSN")
_CLAUSE_START = ("FOR", "VERSION", "TIMESTAMP")
_META_VERSION = "dosql_version"  # a clause written after the alias, moved onto the table
_META_START = "dosql_start"  # character offset of a positional ``?``


class DoSQLiteParser(SQLiteParser):
    def _parse_version(self) -> exp.Version | None:
        if self._match_text_seq("VERSION", "AS", "OF"):
            kind = "SNAPSHOT"  # Spark / Iceberg: VERSION AS OF <snapshot id>
        elif self._match_text_seq("TIMESTAMP", "AS", "OF"):
            kind = "TIMESTAMP"  # Spark / Iceberg: TIMESTAMP AS OF '<time>'
        elif not self._match_text_seq("FOR", "SYSTEM_TIME"):
            return None
        elif not self._match_text_seq("AS", "OF"):
            self.raise_error("expected AS OF after FOR SYSTEM_TIME (only AS OF is supported)")
        else:
            kind = "TIMESTAMP"
            if self._match_texts(_KINDS):
                kind = self._prev.text.upper()
        value = self._parse_unary()
        if isinstance(value, exp.Cast) and kind == "TIMESTAMP":
            value = value.this  # ``AS OF TIMESTAMP`` followed by a typed literal
        if not _valid_value(kind, value):
            self.raise_error(
                f"FOR SYSTEM_TIME AS OF {kind} expects "
                + (
                    "a string literal or a parameter"
                    if kind == "TIMESTAMP"
                    else "an integer, a string literal or a parameter"
                    if kind == "SNAPSHOT"
                    else "an integer or a parameter"
                )
            )
        return self.expression(exp.Version(this=kind, kind="AS OF", expression=value))

    def _parse_table_alias(self, alias_tokens: Any = None) -> exp.TableAlias | None:
        alias = super()._parse_table_alias(alias_tokens=alias_tokens)
        if alias is not None and self._curr and self._curr.text.upper() in _CLAUSE_START:
            version = self._parse_version()
            if version is not None:
                alias.meta[_META_VERSION] = version
        return alias

    def _parse_placeholder(self) -> exp.Expr | None:
        token = self._curr
        node = super()._parse_placeholder()
        if isinstance(node, exp.Placeholder) and not node.this and token is not None:
            node.meta[_META_START] = token.start
        return node


def _valid_value(kind: str, value: exp.Expression | None) -> bool:
    if isinstance(value, exp.Placeholder):
        return True
    if not isinstance(value, exp.Literal):
        return False
    if kind == "TIMESTAMP":
        return value.is_string
    if kind == "LSN":
        return not value.is_string
    return True


class DoSQLiteGenerator(SQLiteGenerator):
    def version_sql(self, expression: exp.Version) -> str:
        return f"FOR SYSTEM_TIME AS OF {expression.name} {self.sql(expression, 'expression')}"


class DoSQLite(SQLite):
    """SQLite plus ``FOR SYSTEM_TIME AS OF`` on table references."""

    Parser = DoSQLiteParser
    Generator = DoSQLiteGenerator


DIALECT = DoSQLite()


@dataclass(frozen=True)
class TemporalRef:
    """One historical table reference of a statement.

    ``index`` numbers the references in statement order (the key for
    :func:`strip`). ``value`` is the resolved literal (UTC microseconds for a
    timestamp, a :class:`~dosql.timetravel.points.SnapshotPoint` for a
    snapshot, an int for an LSN) or None when ``param`` names the parameter
    that holds it: an int is the 0-based position of a ``?`` among all ``?``
    of the statement, a str the name of a ``:name`` parameter.
    """

    index: int
    table: str
    db: str | None
    alias: str | None
    kind: Kind
    value: Any = None
    param: int | str | None = None

    def point(self, params: Sequence[Any] | Mapping[str, Any] | None = None, *, shard=None):
        """The :data:`~dosql.timetravel.points.Point` this reference names."""
        raw: Any = self.value
        if self.param is not None:
            raw = _param_value(self.param, params)
        if self.kind == "timestamp":
            micros = raw if self.param is None else points.parse_timestamp(raw)
            return points.TimestampPoint(micros)
        if self.kind == "snapshot":
            return raw if self.param is None else points.parse_snapshot(raw)
        return points.parse_lsn(raw, shard)


@dataclass(frozen=True)
class HistoryRef:
    """One ``dosql_history('t')`` table function of a statement (lists the lake
    snapshots of ``t``). ``table`` is the literal name, or None when ``param``
    (as in :class:`TemporalRef`) names the parameter that holds it."""

    index: int
    table: str | None
    alias: str | None
    param: int | str | None = None

    def table_name(self, params: Sequence[Any] | Mapping[str, Any] | None = None) -> str:
        from dosql.errors import ValidationError

        name = self.table if self.param is None else _param_value(self.param, params)
        if not isinstance(name, str) or not name:
            raise ValidationError(
                f"dosql_history() takes a table name (text), got {name!r}", code="INVALID_INPUT"
            )
        return name


HISTORY_FUNCTION = "dosql_history"


def _param_value(param: int | str, params: Sequence[Any] | Mapping[str, Any] | None) -> Any:
    from dosql.errors import ValidationError

    try:
        if isinstance(param, int):
            if isinstance(params, Mapping) or params is None:
                raise IndexError
            return params[param]
        if not isinstance(params, Mapping):
            raise KeyError
        return params[param]
    except (IndexError, KeyError):
        where = f"parameter {param + 1}" if isinstance(param, int) else f"parameter :{param}"
        raise ValidationError(
            f"FOR SYSTEM_TIME AS OF uses {where}, which was not supplied",
            code="INVALID_PARAMETERS",
        ) from None


def parse(sql: str) -> exp.Expression:
    """Parse one statement in the DoSQLite dialect (SYNTAX_ERROR if it cannot)."""
    try:
        trees = [t for t in sqlglot.parse(sql, read=DIALECT) if t is not None]
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QueryError(f"cannot parse statement: {first}", code="SYNTAX_ERROR") from None
    if len(trees) != 1:
        raise QueryError("you can only execute one statement at a time", code="QUERY_ERROR")
    tree = trees[0]
    _attach_alias_versions(tree)
    return tree


def _attach_alias_versions(tree: exp.Expression) -> None:
    """Move a clause written after the alias (``FROM t AS a FOR SYSTEM_TIME …``)
    onto its table."""
    for alias in list(tree.find_all(exp.TableAlias)):
        version = alias.meta.pop(_META_VERSION, None)
        if version is None:
            continue
        parent = alias.parent
        if not isinstance(parent, exp.Table) or not isinstance(parent.this, exp.Identifier):
            raise QueryError(
                "FOR SYSTEM_TIME AS OF applies to a table name, not to a subquery or function: "
                "put it inside the subquery, after the table name",
                code="SYNTAX_ERROR",
            )
        if parent.args.get("version") is not None:
            raise QueryError(
                f"table {parent.name} has two FOR SYSTEM_TIME clauses", code="SYNTAX_ERROR"
            )
        parent.set("version", version)


def _temporal_tables(tree: exp.Expression) -> list[exp.Table]:
    return [t for t in tree.find_all(exp.Table, bfs=False) if t.args.get("version") is not None]


def temporal_refs(tree: exp.Expression) -> list[TemporalRef]:
    """Every historical table reference, in statement order, literals resolved.

    Raises ValidationError (INVALID_INPUT) for a malformed timestamp,
    snapshot or LSN literal, and NotSupportedError for a historical table as
    the target of INSERT/UPDATE/DELETE (history is read-only).
    """
    from dosql.errors import NotSupportedError

    positional = _positional_order(tree)
    refs: list[TemporalRef] = []
    for i, table in enumerate(_temporal_tables(tree)):
        parent = table.parent
        if isinstance(parent, exp.Insert | exp.Update | exp.Delete) and parent.this is table:
            raise NotSupportedError(
                f"cannot write to {table.name} FOR SYSTEM_TIME AS OF: history is read-only "
                "(to restore old rows, INSERT INTO a table SELECT … FROM the historical table)"
            )
        version: exp.Version = table.args["version"]
        kind = version.name.upper()
        node = version.expression
        value: Any = None
        param: int | str | None = None
        if isinstance(node, exp.Placeholder):
            param = str(node.this) if node.this else positional.get(id(node), 0)
        elif kind == "TIMESTAMP":
            value = points.parse_timestamp(node.name)
        elif kind == "SNAPSHOT":
            value = points.parse_snapshot(int(node.name) if not node.is_string else node.name)
        else:
            value = points.parse_lsn(int(node.name)).lsn
        refs.append(
            TemporalRef(
                index=i,
                table=table.name,
                db=table.db or None,
                alias=table.alias or None,
                kind=kind.lower(),  # type: ignore[arg-type]
                value=value,
                param=param,
            )
        )
    return refs


def _positional_order(tree: exp.Expression) -> dict[int, int]:
    """id(placeholder node) -> its 0-based position among the statement's ``?``."""
    nodes = [p for p in tree.find_all(exp.Placeholder, bfs=False) if not p.this]
    nodes.sort(key=lambda p: p.meta.get(_META_START, 0))
    return {id(p): i for i, p in enumerate(nodes)}


def _history_tables(tree: exp.Expression) -> list[exp.Table]:
    return [
        t
        for t in tree.find_all(exp.Table, bfs=False)
        if isinstance(t.this, exp.Anonymous) and t.this.name.lower() == HISTORY_FUNCTION
    ]


def history_refs(tree: exp.Expression) -> list[HistoryRef]:
    """Every ``dosql_history(<table>)`` table function, in statement order."""
    from dosql.errors import ValidationError

    positional = _positional_order(tree)
    out: list[HistoryRef] = []
    for i, table in enumerate(_history_tables(tree)):
        args = table.this.expressions
        arg = args[0] if len(args) == 1 else None
        name: str | None = None
        param: int | str | None = None
        if isinstance(arg, exp.Placeholder):
            param = str(arg.this) if arg.this else positional.get(id(arg), 0)
        elif isinstance(arg, exp.Literal) and arg.is_string:
            name = arg.name
        elif isinstance(arg, exp.Column) and isinstance(arg.this, exp.Identifier):
            name = arg.name  # dosql_history(users): a bare name is accepted too
        else:
            raise ValidationError(
                "dosql_history() takes one argument, the table name: "
                "SELECT * FROM dosql_history('users')",
                code="INVALID_INPUT",
            )
        out.append(HistoryRef(index=i, table=name, alias=table.alias or None, param=param))
    return out


def strip(
    tree: exp.Expression,
    rename: Mapping[int | TemporalRef, str],
    history: Mapping[int | HistoryRef, str] | None = None,
) -> exp.Expression:
    """A copy of ``tree`` in which each historical reference is a plain table.

    ``rename`` maps a reference (its :attr:`TemporalRef.index`, or the ref
    itself) to the name of the table holding its historical rows. The
    original name (or alias) stays the reference's alias, so qualified
    columns (``users.name``) keep working. References missing from
    ``rename`` raise KeyError (the router must load every one).
    ``history`` does the same for ``dosql_history(...)`` table functions
    (keyed by :attr:`HistoryRef.index`); those not in it stay as they are.
    """
    names = {(k.index if isinstance(k, TemporalRef) else k): v for k, v in rename.items()}
    out = tree.copy()
    listing = {(k.index if isinstance(k, HistoryRef) else k): v for k, v in (history or {}).items()}
    for i, table in enumerate(_history_tables(out)):
        if i in listing:
            alias = table.args.get("alias") or exp.TableAlias(
                this=exp.to_identifier(HISTORY_FUNCTION, quoted=True)
            )
            table.set("this", exp.to_identifier(listing[i], quoted=True))
            table.set("alias", alias)
    for i, table in enumerate(_temporal_tables(out)):
        if i not in names:
            raise KeyError(f"no name given for historical reference {i} ({table.name})")
        alias = table.args.get("alias")
        if alias is None:
            alias = exp.TableAlias(this=exp.to_identifier(table.name, quoted=True))
        table.set("this", exp.to_identifier(names[i], quoted=True))
        for arg in ("db", "catalog", "version"):
            table.set(arg, None)
        table.set("alias", alias)
    return out


def consumed_params(refs: Sequence[TemporalRef | HistoryRef]) -> set[int | str]:
    """The parameters the temporal clauses (and dosql_history arguments) use:
    gone from the stripped statement."""
    return {r.param for r in refs if r.param is not None}


def remaining_params(
    params: Sequence[Any] | Mapping[str, Any] | None, refs: Sequence[TemporalRef | HistoryRef]
) -> Sequence[Any] | Mapping[str, Any] | None:
    """Positional parameters without those the temporal clauses consumed, in
    order (they bind the stripped statement's ``?``); named ones unchanged."""
    if params is None or isinstance(params, Mapping):
        return params
    used = {p for p in consumed_params(refs) if isinstance(p, int)}
    return [v for i, v in enumerate(params) if i not in used]


_LIST_END = {"FROM", "WHERE", "GROUP", "HAVING", "WINDOW", "ORDER", "LIMIT", "UNION"}
_LIST_END |= {"INTERSECT", "EXCEPT"}


def _select_list_texts(sql: str) -> list[str] | None:
    """The select-list items of the statement's first top-level SELECT, as written."""
    try:
        tokens = DIALECT.tokenize(sql)
    except TokenError:
        return None
    depth, start = 0, None
    items: list[str] = []
    first = last = None
    for tok in tokens:
        word = tok.text.upper()
        if tok.token_type == TokenType.L_PAREN:
            depth += 1
        elif tok.token_type == TokenType.R_PAREN:
            depth -= 1
        if start is None:
            if depth == 0 and word == "SELECT":
                start = tok.end + 1
            continue
        if depth == 0 and tok.token_type != TokenType.STRING and word in _LIST_END:
            break
        if depth == 0 and tok.token_type == TokenType.COMMA:
            if first is not None:
                items.append(sql[first.start : last.end + 1])
            first = last = None
            continue
        if first is None and not items and word in ("DISTINCT", "ALL"):
            continue
        first = first or tok
        last = tok
    if first is not None:
        items.append(sql[first.start : last.end + 1])
    return items if start is not None else None


def keep_column_names(tree: exp.Expression, sql: str) -> None:
    """Alias each unaliased computed item of the result's select list by its
    text as written in ``sql`` (SQLite names such a column by its text, and
    the statement the router runs is regenerated: ``upper(name)`` would come
    back as ``UPPER(name)``). Changes nothing when the two do not line up."""
    select = tree
    while isinstance(select, exp.SetOperation):
        select = select.this
    if not isinstance(select, exp.Select):
        return
    texts = _select_list_texts(sql)
    if texts is None or len(texts) != len(select.expressions):
        return
    items = []
    for node, text in zip(select.expressions, texts, strict=True):
        if isinstance(node, exp.Alias | exp.Column | exp.Star):
            items.append(node)
        else:
            items.append(exp.alias_(node, text, quoted=True))
    select.set("expressions", items)
