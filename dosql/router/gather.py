"""The router-side plan: gather the rows a statement needs, run it in memory.

When a SELECT cannot be answered by sending SQL to shards and merging what
comes back (joins of tables that are not co-located, subqueries, compound
selects, GROUP BY over several shards, window functions, CTEs …), the router
fetches every physical table the statement references from the shards that
hold it, loads the rows into a per-query in-memory SQLite database created
from the table's ORIGINAL ``CREATE TABLE`` (and ``CREATE INDEX``) text, and
runs the client's own SQL there. Affinity, collations, declared types, NULL
handling and arithmetic are then SQLite's by construction, so the answer is
the one a single SQLite database holding all the rows would give.

To keep the fetched rows few, conjuncts of the top-level WHERE that reference
one table only (and no subquery, no non-deterministic function) are pushed
into that table's fetch; a conjunct on the sharding column also narrows the
shards asked. Which table an unqualified column belongs to is decided at run
time from the gathered tables' column lists (cached with their DDL).

A table referenced several times is fetched once (without filters). Rowids of
sharded tables are per shard, so a statement that reads ``rowid`` of a
sharded table without an INTEGER PRIMARY KEY is refused.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp
from sqlglot.tokens import TokenType

from dosql.errors import DoSQLError, NotSupportedError, QueryError
from dosql.router import statement as P
from dosql.router.conditions import _cond
from dosql.router.plan import Cond

SHARD_COL = "__dosql_shard"  # a tagged table's column: the index of the shard a row came from
RID_COL = "__dosql_rid"  # a tagged table's column: the row's rowid on that shard
ROWID_NAMES = frozenset({"rowid", "oid", "_rowid_"})
_VOLATILE = frozenset(
    {"random", "randomblob", "changes", "total_changes", "last_insert_rowid", "sqlite_offset"}
)


@dataclass(frozen=True)
class Conjunct:
    """One top-level WHERE conjunct that might be pushed into a single table's fetch."""

    text: str
    params: tuple[int, ...] | None  # positional parameter indices; None: none / named
    quals: frozenset[str]  # table qualifiers used (lower case)
    bare: frozenset[str]  # unqualified column names (lower case)
    qualified: frozenset[str] = frozenset()  # qualified column names (lower case)
    conds: tuple[Cond, ...] = ()  # routing conditions when pushed to this ref (sharded)


@dataclass(frozen=True)
class GatherRef:
    """A physical table the statement reads (each distinct name once)."""

    name: str
    qual: str | None = None  # the qualifier of its single top-level FROM reference
    alias: str | None = None  # alias text for the fetch (None: the table name)
    candidates: tuple[Conjunct, ...] = ()


@dataclass(frozen=True)
class Gather:
    refs: tuple[GatherRef, ...]
    allow_bare: bool = False  # top-level FROM holds physical tables only
    from_names: tuple[str, ...] = ()  # table names in the top-level FROM
    uses_rowid: bool = False
    tag: str | None = None  # this table's rows carry (shard index, rowid) columns (dml.py)
    views: tuple[str, ...] = ()  # CREATE VIEW texts to run in memory, dependencies first


@dataclass
class LocalSchema:
    """What the router needs to recreate one table in memory."""

    ddl: list[str]  # CREATE TABLE first, then CREATE INDEX
    columns: list[str]  # insertable columns in table order (no generated ones)
    names: frozenset[str]  # every column name, lower case
    rowid_alias: bool  # INTEGER PRIMARY KEY: the rowid is a real, global column
    has_rowid: bool
    names_cased: tuple[str, ...] = ()  # every column name as declared
    cache: dict[str, Any] = field(default_factory=dict)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def raw_columns(col: str) -> str:
    """Fetch ``col`` as two columns: TEXT as its bytes (first), anything else (second).

    A row whose text is not valid UTF-8 cannot travel as text; as a BLOB it
    does, and :func:`run_local` makes it TEXT again with the same bytes.
    """
    return (
        f"CASE WHEN typeof({col}) = 'text' THEN CAST({col} AS BLOB) END, "
        f"CASE WHEN typeof({col}) = 'text' THEN NULL ELSE {col} END"
    )


def _raw_values(n: int) -> str:
    """VALUES for rows fetched with :func:`raw_columns` (``2 * n`` parameters)."""
    return ", ".join(
        f"CASE WHEN ?{2 * i + 1} IS NOT NULL THEN CAST(?{2 * i + 1} AS TEXT) ELSE ?{2 * i + 2} END"
        for i in range(n)
    )


# --------------------------------------------------------------------------- planning


def build(st: Any, ast: exp.Expression, vs: Any) -> Gather:
    """The gather spec of a statement (tables, pushable conjuncts)."""

    tables = P.physical_tables(ast)
    names = [P._table_name(t) for t in tables]
    view_ddl: list[str] = []
    if st.views:
        names = _expand_views(st.views, vs, names, view_ddl, set())
        tables = [
            t for t in tables if P._table_name(t) not in st.views or vs.has_table(P._table_name(t))
        ]
    for n in names:
        if P._is_internal(n):
            raise NotSupportedError(
                f"{n} together with sharded tables: the router cannot gather SQLite's "
                "internal tables"
            )
        P._vs_table(vs, n)
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    uses_rowid = any(str(c.name).lower() in ROWID_NAMES for c in ast.find_all(exp.Column))
    refs: dict[str, GatherRef] = {n: GatherRef(n) for n in dict.fromkeys(names)}
    views = tuple(view_ddl)
    if not isinstance(ast, exp.Select):
        return Gather(tuple(refs.values()), uses_rowid=uses_rowid, views=views)
    from_ = ast.args.get("from_") or ast.args.get("from")
    if from_ is None or views:
        return Gather(tuple(refs.values()), uses_rowid=uses_rowid, views=views)
    sources = [from_.this] + [j.this for j in ast.args.get("joins") or []]
    outer = any(
        str(j.args.get("side") or "").upper() in ("LEFT", "RIGHT", "FULL")
        or str(j.args.get("kind") or "").upper() == "OUTER"
        for j in ast.args.get("joins") or []
    )
    physical = {id(t) for t in tables}
    allow_bare = all(isinstance(s, exp.Table) and id(s) in physical for s in sources)
    from_names = tuple(P._table_name(s) for s in sources if id(s) in physical)
    where = ast.args.get("where")
    conjuncts = [] if outer or where is None else _split_where(st, ast, where)
    analysed = [(_analyse(text, params, node), node) for text, params, node in conjuncts]
    for s in sources:
        if not (isinstance(s, exp.Table) and id(s) in physical):
            continue
        name = P._table_name(s)
        if counts[name] != 1:
            continue
        qual = str(s.alias).lower() if s.alias else name
        alias = str(s.alias) if s.alias else None
        table = vs.table(name)
        picked: list[Conjunct] = []
        for c, node in analysed:
            if c is None or (c.quals - {qual}) or (c.bare and not allow_bare):
                continue
            if not c.quals and not c.bare:
                continue
            conds: tuple[Cond, ...] = ()
            key = str(table.column).lower() if table.kind == "sharded" else None
            if key is not None and (key in c.bare or key in c.qualified):
                cond = _cond(node, key, {qual})
                conds = (cond,) if cond is not None else ()
            picked.append(Conjunct(c.text, c.params, c.quals, c.bare, c.qualified, conds))
        refs[name] = GatherRef(name, qual, alias, tuple(picked))
    return Gather(tuple(refs.values()), allow_bare, from_names, uses_rowid)


def _expand_views(
    views: dict[str, str], vs: Any, names: list[str], ddl: list[str], seen: set[str]
) -> list[str]:
    """Physical tables behind ``names`` (views replaced by what they read); DDL in order."""

    out: list[str] = []
    for n in names:
        if n not in views or vs.has_table(n):
            out.append(n)
            continue
        if n in seen:
            continue
        seen.add(n)
        tree = P.Statement(views[n]).ast
        query = tree.expression if isinstance(tree, exp.Create) else tree
        inner = [P._table_name(t) for t in P.physical_tables(query)]
        out.extend(_expand_views(views, vs, inner, ddl, seen))
        ddl.append(views[n])
    return out


def _flatten_and(node: exp.Expression) -> list[exp.Expression]:
    if isinstance(node, exp.And):
        return _flatten_and(node.this) + _flatten_and(node.expression)
    return [node]


def _split_where(
    st: Any, ast: exp.Select, where: exp.Where
) -> list[tuple[str, tuple[int, ...] | None, exp.Expression]]:
    """Top-level WHERE conjuncts with their original text (empty if they cannot be matched)."""
    toks = st.toks
    wi = next((i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.WHERE), None)
    if wi is None:
        return []
    stops = {
        TokenType.GROUP_BY,
        TokenType.HAVING,
        TokenType.ORDER_BY,
        TokenType.LIMIT,
        TokenType.WINDOW,
    }
    end = next(
        (i for i in range(wi + 1, len(toks)) if toks[i].depth == 0 and toks[i].type in stops),
        len(toks),
    )
    spans: list[tuple[int, int]] = []
    a = wi + 1
    between = 0
    case = 0
    for i in range(wi + 1, end):
        t = toks[i]
        if t.depth != 0:
            continue
        if t.type == TokenType.CASE:
            case += 1
        elif t.type == TokenType.END:
            case -= 1
        elif t.type == TokenType.BETWEEN:
            between += 1
        elif t.type == TokenType.AND and case == 0:
            if between:
                between -= 1
            else:
                spans.append((a, i))
                a = i + 1
    spans.append((a, end))
    nodes = _flatten_and(where.this)
    if len(nodes) != len(spans) or any(x >= y for x, y in spans):
        return []
    out = []
    for (x, y), node in zip(spans, nodes, strict=True):
        chars = (toks[x].start, toks[y - 1].end)
        out.append((st.text[chars[0] : chars[1]], st.spans_params([chars]), node))
    return out


def _analyse(text: str, params: tuple[int, ...] | None, node: exp.Expression) -> Conjunct | None:
    quals: set[str] = set()
    bare: set[str] = set()
    qualified: set[str] = set()
    for n in node.walk():
        if isinstance(n, exp.Subquery | exp.Select | exp.Exists | exp.Window | exp.AggFunc):
            return None
        if isinstance(n, exp.In) and n.args.get("field") is not None:
            return None  # ``x IN tablename``: reads another whole table, like a subquery
        if isinstance(n, exp.Anonymous):
            fname = str(n.this).lower()
            if fname in _VOLATILE or fname in ("group_concat", "string_agg"):
                return None
        if isinstance(n, exp.Rand):
            return None
        if isinstance(n, exp.Column):
            if n.args.get("db") or n.args.get("catalog"):
                return None
            if isinstance(n.this, exp.Star):
                return None
            if n.table:
                quals.add(str(n.table).lower())
                qualified.add(str(n.name).lower())
            else:
                bare.add(str(n.name).lower())
    return Conjunct(text, params, frozenset(quals), frozenset(bare), frozenset(qualified))


def pushed_for(g: Gather, ref: GatherRef, schemas: dict[str, LocalSchema]) -> list[Conjunct]:
    """The candidates of ``ref`` that certainly refer to it alone (needs the schemas)."""
    mine = schemas[ref.name].names
    others: set[str] = set()
    for n in g.from_names:
        if n != ref.name:
            others |= schemas[n].names
    out = []
    for c in ref.candidates:
        if any(b not in mine or b in others for b in c.bare):
            continue
        out.append(c)
    return out


# --------------------------------------------------------------------------- running


def create_as(
    schemas: list[LocalSchema],
    data: list[tuple[str, list[str], list[list[Any]]]],
    name: str,
    select: str,
    extra_ddl: list[str],
) -> tuple[str, list[list[Any]]]:
    """CREATE TABLE name AS select, in memory: SQLite's own DDL for it, and its rows."""
    out: dict[str, Any] = {}

    def finish(con: sqlite3.Connection) -> None:
        q = "SELECT sql FROM sqlite_master WHERE name = ? COLLATE NOCASE"
        out["ddl"] = con.execute(q, (name,)).fetchone()[0]
        out["rows"] = [list(r) for r in con.execute(f"SELECT * FROM {quote(name)}")]

    # under its own name, so SQLite formats the DDL exactly as it would on one database
    run_local(
        schemas, data, f"CREATE TABLE {quote(name)} AS {select}", None, None, extra_ddl, finish
    )
    return out["ddl"], out["rows"]


_ROW_OVERHEAD = 64  # bytes a row list costs besides its values (an estimate)
_VALUE_BYTES = 16


def _read_within(cur: sqlite3.Cursor, budget_bytes: int | None) -> list[list[Any]]:
    """Every row of ``cur``, or QUERY_TOO_LARGE once they pass ``budget_bytes``."""
    if not budget_bytes:
        return [list(r) for r in cur.fetchall()]
    out: list[list[Any]] = []
    used = 0
    while chunk := cur.fetchmany(1000):
        for r in chunk:
            used += _ROW_OVERHEAD + sum(
                len(v) if isinstance(v, str | bytes) else _VALUE_BYTES for v in r
            )
            out.append(list(r))
        if used > budget_bytes:
            raise QueryError(
                f"the router-side result of this statement passed its memory budget "
                f"({budget_bytes // (1 << 20)} MB, router.query_memory_mb) after {len(out)} "
                "rows: narrow it with WHERE or LIMIT, or raise the budget",
                code="QUERY_TOO_LARGE",
                details={"rows": len(out), "budget_bytes": budget_bytes},
            )
    return out


def run_local(
    schemas: list[LocalSchema],
    data: list[tuple[str, list[str], list[list[Any]]]],
    sql: str,
    params: Any,
    timeout_ms: int | None,
    extra_ddl: list[str] | None = None,
    finish: Any = None,
    raw: frozenset[str] = frozenset(),
    budget_bytes: int | None = None,
) -> tuple[list[str], list[str | None] | None, list[list[Any]]]:
    """Recreate the tables in memory, load ``data`` (table, columns, rows), run ``sql``.

    Rows of the tables in ``raw`` were fetched with :func:`raw_columns`. The
    result may take at most ``budget_bytes`` (estimated as it is read): one
    cross join must not take the router down.
    """
    from dosql.shard.decltypes import decltypes
    from dosql.shard.errormap import map_error

    con = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        for s in schemas:
            for ddl in s.ddl:
                con.execute(ddl)
        for ddl in extra_ddl or []:
            con.execute(ddl)
        con.execute("BEGIN")
        for table, columns, rows in data:
            if not rows:
                continue
            values = _raw_values(len(columns)) if table in raw else ", ".join("?" * len(columns))
            ins = (
                f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) "
                f"VALUES ({values})"
            )
            try:
                con.executemany(ins, rows)
            except sqlite3.IntegrityError as exc:
                raise NotSupportedError(
                    f"rows of table {table} from different shards violate a constraint that "
                    f"holds per shard only ({exc}); the router cannot combine them"
                ) from None
        con.execute("COMMIT")
        if timeout_ms:
            deadline = time.monotonic() + timeout_ms / 1000
            con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
        try:
            cur = con.execute(sql, params if params is not None else ())
            rows_out = _read_within(cur, budget_bytes)
        except DoSQLError:
            raise
        except Exception as exc:
            raise map_error(exc) from None
        if finish is not None:
            finish(con)
        columns = [d[0] for d in cur.description] if cur.description else []
        types = decltypes(con, sql, len(columns)) if columns else None
        return columns, types, rows_out
    finally:
        con.close()
