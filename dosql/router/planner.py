"""From SQL text to a tree of operators (:mod:`dosql.router.engine`; sqlglot, SQLite dialect).

The planner decides, once per statement text, where a statement goes and
how results are combined. Every plan is per-shard SQL spliced from the
client's own text plus, where needed, a router-side step whose semantics are
SQLite's (an in-memory SQLite database), so an answer through the router is
the answer of one SQLite database holding all rows.

Read plans, fastest first:

- one shard: a WHERE that pins the sharding column (=, IN, OR of those; a
  range on a range vindex), reference-only or unsharded-only statements, and
  co-located joins (every sharded table joined on its sharding key, same
  vindex and key type) pinned by one key — the statement as written;
- scatter + merge of a single-table SELECT: concatenation, k-way ORDER BY
  merge, LIMIT/OFFSET, COUNT/SUM/MIN/MAX/AVG/TOTAL without GROUP BY;
- partial aggregation for GROUP BY with plain COUNT/SUM/TOTAL/MIN/MAX/AVG
  (:mod:`dosql.router.groupby`);
- everything else (joins, subqueries, CTEs, set operations, DISTINCT,
  window functions, DISTINCT aggregates, GROUP_CONCAT, views): the gather
  plan (:mod:`dosql.router.gather`).

Writes: INSERT … VALUES split per shard by key (NULL keys of policy tables
on the default shard; sequence keys assigned by the router); INSERT …
SELECT and VALUES with expressions run their source through the router,
then route the rows; UPDATE/DELETE routed like SELECT, or router-side when
they hold subqueries/joins/FROM or move rows (:mod:`dosql.router.dml`).
DDL on every shard that holds the table (``default_table`` policy for new
tables); views live in cluster metadata. ``EXPLAIN`` describes the plan
(:mod:`dosql.router.engine.explain`); ``EXPLAIN QUERY PLAN`` goes to one shard.

Savepoints run on every shard (a SAVEPOINT makes every shard join the router
transaction, so ROLLBACK TO undoes work on shards touched later too).

Still refused (NotSupportedError with the reason): ATTACH,
temporary tables, triggers, virtual tables, table
renames and renaming/dropping a sharding column, PRAGMA assignments, ?NNN /
@name / $name parameters, RETURNING or ON CONFLICT on writes that run
router-side, row-value SET on those, and (at run time) reading the rowid of
a sharded table without INTEGER PRIMARY KEY, or gathering rows that break a
per-shard-only UNIQUE constraint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.tokens import TokenType

from dosql.errors import NotSupportedError, QueryError
from dosql.router import dml, gather, groupby, sqltext
from dosql.router.conditions import _conjuncts, _names_for, where_conds
from dosql.router.engine.aggregate import Aggregate
from dosql.router.engine.base import Operator
from dosql.router.engine.concat import Concat
from dosql.router.engine.create_table_as import CreateTableAs
from dosql.router.engine.ddl import DDL, DropIndex
from dosql.router.engine.explain import Explain
from dosql.router.engine.group_aggregate import GroupAggregate
from dosql.router.engine.insert import Insert
from dosql.router.engine.insert_select import InsertSelect
from dosql.router.engine.limit import Limit
from dosql.router.engine.merge_sort import MergeSort
from dosql.router.engine.noop import Noop
from dosql.router.engine.route import Route
from dosql.router.engine.router_side import RouterSide
from dosql.router.engine.router_side_dml import RouterSideDml
from dosql.router.engine.scatter import Scatter
from dosql.router.engine.sequence import Sequence
from dosql.router.engine.sharded_read import ShardedRead
from dosql.router.engine.temporal import TemporalInsert, TemporalSelect
from dosql.router.engine.transaction import Savepoint, Transaction
from dosql.router.engine.views import ViewDDL
from dosql.router.engine.write import Write
from dosql.router.plan import AggSpec, Pin, Routing, SortKey, Value
from dosql.router.sqltext import Tok
from dosql.router.statement import (
    Statement,
    _clause_starts,
    _has_params,
    _is_internal,
    _item_expr_span,
    _refuse,
    _table_name,
    _vs_table,
    physical_tables,
    value_of,
)
from dosql.router.temporal_planner import plan_temporal

_INT = re.compile(r"[0-9]+")
_EXPLAIN = re.compile(r"\s*EXPLAIN\s+(QUERY\s+PLAN\s+)?", re.IGNORECASE)
_SQLITE_AGGS = {"count", "sum", "avg", "min", "max", "total", "group_concat", "string_agg"}


def _require_sharding_column(st: Statement, table: str, column: str) -> None:
    """A table the VSchema shards by ``column`` must have it: every row is placed by it."""
    schema = st.ast.this if isinstance(st.ast, exp.Create) else None
    if not isinstance(schema, exp.Schema):
        return  # not a column list: SQLite judges the statement
    # a typed column is a ColumnDef, an untyped one a bare Identifier
    names = {
        c.name.lower() for c in schema.expressions if isinstance(c, exp.ColumnDef | exp.Identifier)
    }
    if column.lower() not in names:
        raise QueryError(
            f"table {table} is sharded by column {column} in the VSchema, but this CREATE TABLE "
            f"has no column {column}: add it, or change the table's entry in the VSchema",
            code="SHARDING_COLUMN_MISSING",
            details={"table": table, "column": column},
        )


# --------------------------------------------------------------------------- values


# --------------------------------------------------------------------------- tables


def _whole_route(vs: Any, names: list[str], *, write: bool) -> Routing:
    """Route for a statement whose tables are all reference/unsharded/internal."""
    shards: set[str] = set()
    any_ref = False
    for name in names:
        if _is_internal(name):
            shards.add(vs.default_shard)
            continue
        table = _vs_table(vs, name)
        if table.kind == "unsharded":
            shards.add(table.shard)
        elif table.kind == "reference":
            any_ref = True
        else:
            raise _refuse(
                f"table {name} is sharded: a statement that writes a reference table cannot "
                "read sharded tables yet"
            )
    if len(shards) > 1:
        raise _refuse(
            "the statement uses unsharded tables on different shards ("
            + ", ".join(sorted(shards))
            + "); cross-shard joins come in a later version"
        )
    if shards:
        return Routing("shard", shard=shards.pop())
    if any_ref:
        return Routing("all") if write else Routing("any")
    return Routing("shard", shard=vs.default_shard)


# --------------------------------------------------------------------------- WHERE analysis


# --------------------------------------------------------------------------- planner


def plan(sql: str, vs: Any, views: dict[str, str] | None = None) -> Operator:
    """``views``: views created through the router, name (lower case) -> CREATE VIEW text."""
    st = Statement(sql)
    st.views = views or {}
    first = st.words[0]
    if first == "BEGIN":
        mode = st.words[1] if len(st.words) > 1 else "DEFERRED"
        return Transaction(
            st.text, "begin", "immediate" if mode in ("IMMEDIATE", "EXCLUSIVE") else "deferred"
        )
    if first in ("COMMIT", "END"):
        return Transaction(st.text, "commit")
    if first == "ROLLBACK":
        if "TO" in st.words:  # ROLLBACK [TRANSACTION] TO [SAVEPOINT] name
            return Savepoint(st.text, "rollback_to", st.toks[-1].text.strip('"`[]'))
        return Transaction(st.text, "rollback")
    if first in ("SAVEPOINT", "RELEASE"):
        if len(st.toks) < 2:
            raise QueryError(f"{first} needs a savepoint name", code="SYNTAX_ERROR")
        op = "savepoint" if first == "SAVEPOINT" else "release"
        return Savepoint(st.text, op, st.toks[-1].text.strip('"`[]'))
    if first == "EXPLAIN":
        if len(st.toks) < 2:
            raise QueryError("EXPLAIN needs a statement to explain", code="SYNTAX_ERROR")
        m = _EXPLAIN.match(st.text)
        rest = st.text[m.end() :] if m else ""
        if not rest.strip():
            raise QueryError("EXPLAIN needs a statement to explain", code="SYNTAX_ERROR")
        inner = plan(rest, vs, views)  # views: EXPLAIN of a statement that reads one
        if m and m.group(1):  # EXPLAIN QUERY PLAN: SQLite's own plan, from one shard
            if isinstance(inner, TemporalSelect | TemporalInsert):
                raise _refuse(
                    "EXPLAIN QUERY PLAN of a statement that reads history: it runs "
                    "router-side in memory, not on a shard; EXPLAIN shows its plan"
                )
            routing = _routing_of(inner)
            if routing is None or routing.kind != "shard":
                routing = Routing("any")
            return Route(st.text, routing)
        return Explain(st.text, inner)
    temporal = plan_temporal(st.text)  # FOR SYSTEM_TIME / dosql_history(): the lake
    if temporal is not None:
        return temporal
    if first in ("ATTACH", "DETACH"):
        raise _refuse(f"{first}: shards manage their own databases")
    if first in ("VACUUM", "ANALYZE", "REINDEX"):
        return Write(st.text, Routing("all"), needs_tx=False)
    if first == "PRAGMA":
        return _plan_pragma(st, vs)
    if first in ("CREATE", "DROP", "ALTER"):
        return _plan_ddl(st, vs)
    ast = st.ast
    if isinstance(ast, exp.Insert):
        return _plan_insert(st, ast, vs)
    if isinstance(ast, exp.Update | exp.Delete):
        return _plan_update_delete(st, ast, vs)
    if isinstance(ast, exp.Query | exp.Values):
        return _plan_select(st, ast, vs)
    raise _refuse(f"statement type {first} is not supported by the router")


# PRAGMAs that only read: the introspection ones (their argument names a table or
# index), and settings read without an argument. Anything else changes a shard.
_PRAGMA_INTROSPECT = frozenset(
    {
        "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
        "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
    }
)  # fmt: skip
_PRAGMA_READ = frozenset(
    {
        "collation_list", "function_list", "module_list", "pragma_list", "compile_options",
        "database_list", "data_version", "page_count", "page_size", "freelist_count",
        "schema_version", "user_version", "application_id", "encoding", "journal_mode",
        "synchronous", "foreign_keys", "cache_size", "busy_timeout", "auto_vacuum",
        "max_page_count", "mmap_size", "temp_store", "wal_autocheckpoint", "case_sensitive_like",
        "recursive_triggers", "secure_delete", "locking_mode", "cell_size_check",
        "automatic_index", "defer_foreign_keys", "ignore_check_constraints", "query_only",
        "reverse_unordered_selects", "trusted_schema", "legacy_alter_table", "hard_heap_limit",
        "soft_heap_limit", "threads", "analysis_limit", "journal_size_limit", "cache_spill",
        "read_uncommitted", "count_changes", "full_column_names", "short_column_names",
    }
)  # fmt: skip
# PRAGMAs that maintain a database without changing its rows: run on every shard,
# like VACUUM (so a read-only token cannot run them).
_PRAGMA_MAINTAIN = frozenset({"optimize", "wal_checkpoint", "incremental_vacuum", "shrink_memory"})


def _plan_pragma(st: Statement, vs: Any) -> Operator:
    name = st.toks[1].text.lower() if len(st.toks) > 1 else ""
    if len(st.toks) > 3 and st.toks[2].text == ".":  # PRAGMA main.table_info(t)
        name = st.toks[3].text.lower()
    argument = "=" in st.words or "(" in st.text
    if name in _PRAGMA_MAINTAIN:
        return Write(st.text, Routing("all"), needs_tx=False)
    if name not in _PRAGMA_INTROSPECT and (argument or name not in _PRAGMA_READ):
        raise _refuse(
            f"PRAGMA {name or '?'} changes a shard's settings or is unknown to the router: "
            "configure shards instead ([shard] settings); introspection PRAGMAs "
            "(table_info, index_list, …) and reading a setting work"
        )
    route = Routing("shard", shard=vs.default_shard)
    for t in st.toks[1:]:
        if t.type in (TokenType.VAR, TokenType.IDENTIFIER, TokenType.STRING):
            name = t.text.lower()
            if vs.has_table(name):
                table = vs.table(name)
                if table.kind == "unsharded":
                    route = Routing("shard", shard=table.shard)
                break
    return Route(st.text, route)


# --------------------------------------------------------------------------- SELECT


def _routing_of(op: Operator) -> Routing | None:
    """The routing of a plan whose statement goes to shards as written (None: none)."""
    if isinstance(op, ShardedRead):
        return op.route.routing
    return getattr(op, "routing", None)


def _router_side(st: Statement, ast: exp.Expression, vs: Any) -> RouterSide:
    return RouterSide(st.text, gather.build(st, ast, vs))


def _plan_select(st: Statement, ast: exp.Expression, vs: Any) -> Operator:
    tables = physical_tables(ast)
    names = [_table_name(t) for t in tables]
    if st.views and any(n in st.views and not vs.has_table(n) for n in names):
        return _router_side(st, ast, vs)  # views: router-side
    sharded = [n for n in names if not _is_internal(n) and _vs_table(vs, n).kind == "sharded"]
    if not sharded:
        try:
            return Route(st.text, _whole_route(vs, names, write=False))
        except NotSupportedError:  # unsharded tables on several shards
            return _router_side(st, ast, vs)
    name = sharded[0]
    from_ = ast.args.get("from_") or ast.args.get("from") if isinstance(ast, exp.Select) else None
    if (
        len(tables) > 1
        or ast.find(exp.CTE) is not None
        or not isinstance(ast, exp.Select)
        or from_ is None
        or from_.this is not tables[0]
        or ast.args.get("joins")
    ):
        fallback = _router_side(st, ast, vs)
        co = _colocated(ast, tables, vs) if isinstance(ast, exp.Select) else None
        if co is None:
            return fallback
        # one shard holds every joined row: the statement as written
        return ShardedRead(
            Route(st.text, co),
            fallback=fallback,
            refuse="a co-located join over several shards runs router-side",
            colocated=tuple(sorted({_table_name(t) for t in tables})),
        )
    table = vs.table(name)
    conds = where_conds(ast.args.get("where"), str(table.column).lower(), _names_for(tables[0]))
    route = Route(st.text, Routing("sharded", table=name, conds=conds))
    m = _Merge()
    refuse: str | None = None
    try:
        _plan_merge(st, ast, m)
    except NotSupportedError as exc:
        # Still fine when the route pins a single shard; decided at run time.
        refuse = exc.message
    multi: Operator | None = None if refuse else _merge_tree(m)
    if refuse and ast.args.get("group"):
        try:
            multi = GroupAggregate(st.text, name, groupby.plan(st, ast))
        except NotSupportedError:
            multi = None
    # Always kept: the fallback when a pushdown turns out inexact at run time (a
    # shard row the merge would have dropped cannot be read, a GROUP BY name is a
    # column after all); used up front when the statement cannot be pushed down.
    try:
        fallback: RouterSide | None = _router_side(st, ast, vs)
    except NotSupportedError:
        fallback = None  # refused at run time if it needs several shards
    return ShardedRead(route, multi=multi, fallback=fallback, refuse=refuse)


@dataclass
class _Merge:
    """What :func:`_plan_merge` finds out about a single-table SELECT's pushdown."""

    pushed: str = ""
    pushed_params: tuple[int, ...] | None = None
    n_hidden: int = 0
    order: tuple[SortKey, ...] = ()
    limit: Value | None = None
    offset: Value | None = None
    aggregates: tuple[AggSpec, ...] | None = None
    probe_from: str | None = None


def _merge_tree(m: _Merge) -> Operator:
    """Scatter the pushed SQL; merge by aggregates, sort keys or concatenation; then limit."""
    scatter = Scatter(m.pushed, m.pushed_params, m.n_hidden)
    op: Operator
    if m.aggregates is not None:
        op = Aggregate(scatter, m.aggregates, m.probe_from)
    elif m.order:
        op = MergeSort(scatter, m.order, m.probe_from)
    else:
        op = Concat(scatter)
    if m.limit is not None or m.offset is not None:
        op = Limit(op, m.limit, m.offset)
    return op


def _colocated(ast: exp.Select, tables: list[exp.Table], vs: Any) -> Routing | None:
    """A route pinning a join whose sharded tables are all joined on their sharding keys.

    Every sharded table must be a top-level FROM/JOIN source (inner, comma, CROSS or
    LEFT join), all of them connected by ``a.key = b.key`` conjuncts (ON or WHERE)
    and sharing one vindex and key type; reference tables may join freely. Then
    every row that can join lives on the shard owning the key value, so a WHERE
    that pins one key pins the statement to that shard (several shards: gather).
    """
    from_ = ast.args.get("from_") or ast.args.get("from")
    if from_ is None:
        return None
    joins = ast.args.get("joins") or []
    sources = [from_.this] + [j.this for j in joins]
    for j in joins:
        side = str(j.args.get("side") or "").upper()
        if side in ("RIGHT", "FULL") or j.args.get("using") or j.args.get("method"):
            return None
    top = {id(s) for s in sources}
    refs: dict[str, tuple[str, Any]] = {}  # qualifier -> (table name, vindex table)
    for t in tables:
        name = _table_name(t)
        if _is_internal(name):
            return None
        table = vs.table(name)
        if table.kind == "unsharded":
            return None
        if table.kind != "sharded":
            continue
        if id(t) not in top:
            return None  # a sharded table inside a subquery/CTE
        qual = str(t.alias).lower() if t.alias else name
        if qual in refs:
            return None
        refs[qual] = (name, table)
    if len(refs) < 2:
        return None
    first = next(iter(refs.values()))[1]
    for _, table in refs.values():
        if (
            table.vindex != first.vindex
            or not table.column_type
            or table.column_type.strip().upper() != str(first.column_type).strip().upper()
        ):
            return None
    parent = {q: q for q in refs}

    def find(q: str) -> str:
        while parent[q] != q:
            q = parent[q]
        return q

    conjuncts = _conjuncts(ast.args.get("where").this if ast.args.get("where") else None)
    for j in joins:
        conjuncts += _conjuncts(j.args.get("on"))
    for c in conjuncts:
        if not isinstance(c, exp.EQ):
            continue
        a, b = c.this, c.expression
        if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
            continue
        qa, qb = str(a.table).lower(), str(b.table).lower()
        if qa in refs and qb in refs:
            ka, kb = str(refs[qa][1].column).lower(), str(refs[qb][1].column).lower()
            if str(a.name).lower() == ka and str(b.name).lower() == kb:
                parent[find(qa)] = find(qb)
    if len({find(q) for q in refs}) != 1:
        return None
    where = ast.args.get("where")
    for qual, (name, table) in refs.items():
        conds = where_conds(where, str(table.column).lower(), {qual})
        conds = tuple(c for c in conds if isinstance(c, Pin))
        if conds:
            return Routing("sharded", table=name, conds=conds)
    return None


def _agg_of(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Anonymous):
        n = str(node.this).lower()
        return n if n in _SQLITE_AGGS else None
    if isinstance(node, exp.Max | exp.Min) and node.expressions:
        return None  # two-argument min/max are scalar functions
    if isinstance(node, exp.AggFunc):
        return node.sql_name().lower()
    return None


def _contains_agg(node: exp.Expression) -> bool:
    return any(_agg_of(n) is not None for n in node.walk())


def _plan_merge(st: Statement, ast: exp.Select, p: _Merge) -> None:
    toks = st.toks
    if ast.args.get("distinct"):
        raise _refuse("SELECT DISTINCT over several shards is not supported yet")
    for arg, what in (("group", "GROUP BY"), ("having", "HAVING"), ("windows", "WINDOW")):
        if ast.args.get(arg):
            raise _refuse(f"{what} over several shards is not supported yet")
    if any(isinstance(n, exp.Window) for n in ast.walk()):
        raise _refuse("window functions over several shards are not supported yet")
    from_i = next(
        (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.FROM), None
    )
    if from_i is None or toks[0].type != TokenType.SELECT:
        raise _refuse("this SELECT form over several shards is not supported yet")
    sel_start = 1
    if toks[1].type in (TokenType.DISTINCT, TokenType.ALL):
        sel_start = 2
    items = sqltext.split_top(toks, sel_start, from_i, 0)
    if len(items) != len(ast.expressions):
        raise _refuse("could not match the select list to its text")
    clauses = _clause_starts(st, from_i)
    end = len(toks)
    from_end = min([i for i in clauses.values()] + [end])
    order_i = clauses.get(TokenType.ORDER_BY)
    limit_i = clauses.get(TokenType.LIMIT)
    if clauses.get(TokenType.OFFSET) is not None and limit_i is None:
        raise _refuse("OFFSET without LIMIT")
    tail_i = min(i for i in (order_i, limit_i, end) if i is not None)
    p.probe_from = sqltext.span_text(st.text, toks, from_i + 1, from_end)
    limit = ast.args.get("limit")
    offset = ast.args.get("offset")
    if limit is not None:
        p.limit = value_of(limit.expression)
        if p.limit is None:
            raise _refuse("LIMIT must be a number or a parameter to run over several shards")
    if offset is not None:
        p.offset = value_of(offset.expression)
        if p.offset is None:
            raise _refuse("OFFSET must be a number or a parameter to run over several shards")
    from_char = toks[from_i].start
    head_span = (0, from_char)
    aggs_present = [_contains_agg(e) for e in ast.expressions]
    if any(aggs_present):
        _plan_aggregates(st, ast, p, items, head_span, from_char, tail_i)
        return
    for o in ast.args.get("order").expressions if ast.args.get("order") else []:
        if _contains_agg(o):
            raise _refuse("ORDER BY an aggregate over several shards is not supported yet")
    aliases = {str(e.alias).lower(): e.this for e in ast.expressions if isinstance(e, exp.Alias)}
    hidden: list[str] = []
    hidden_spans: list[tuple[int, int]] = []
    keys: list[SortKey] = []
    if order_i is not None:
        stop = limit_i if limit_i is not None else end
        terms = sqltext.split_top(toks, order_i + 1, stop, 0)
        ordered = ast.args["order"].expressions
        if len(terms) != len(ordered):
            raise _refuse("could not match ORDER BY terms to their text")
        for (a, b), o in zip(terms, ordered, strict=True):
            desc = bool(o.args.get("desc"))
            nulls_first = o.args.get("nulls_first")
            if nulls_first is None:
                nulls_first = not desc
            # Drop ASC/DESC/NULLS FIRST/LAST from the term text.
            while b > a and toks[b - 1].text.upper() in ("ASC", "DESC", "FIRST", "LAST", "NULLS"):
                b -= 1
            term = o.this
            collation = None
            if isinstance(term, exp.Collate):
                collation = str(term.expression.name).upper()
            text, span = _key_text(st, ast, items, aliases, term, a, b)
            probe = text if not _has_params(st, span) else None
            keys.append(SortKey(len(hidden), desc, bool(nulls_first), collation, probe))
            hidden.append(text)
            hidden_spans.append(span)
    hidden_sql = "".join(f", ({h}) AS __dosql_k{i}" for i, h in enumerate(hidden))
    body = (from_char, toks[tail_i].start if tail_i < end else len(st.text))
    p.pushed = st.text[:from_char].rstrip() + hidden_sql + " " + st.text[body[0] : body[1]].rstrip()
    if order_i is not None:
        order_end = toks[limit_i].start if limit_i is not None else len(st.text)
        p.pushed += " " + st.text[toks[order_i].start : order_end].rstrip()
        body_spans = [head_span, *hidden_spans, body, (toks[order_i].start, order_end)]
    else:
        body_spans = [head_span, *hidden_spans, body]
    p.pushed_params = st.spans_params(body_spans)
    p.n_hidden = len(hidden)
    p.order = tuple(keys)


def _key_text(
    st: Statement,
    ast: exp.Select,
    items: list[tuple[int, int]],
    aliases: dict[str, exp.Expression],
    term: exp.Expression,
    a: int,
    b: int,
) -> tuple[str, tuple[int, int]]:
    """Text of the value an ORDER BY term sorts by, evaluated in the select list."""
    toks = st.toks
    bare = term
    while isinstance(bare, exp.Paren):
        bare = bare.this
    j: int | None = None
    if isinstance(bare, exp.Literal) and not bare.is_string and _INT.fullmatch(str(bare.this)):
        j = int(str(bare.this)) - 1
        if not 0 <= j < len(items):
            raise QueryError(
                f"ORDER BY term out of range - should be between 1 and {len(items)}",
                code="QUERY_ERROR",
            )
    elif isinstance(bare, exp.Column) and not bare.table and str(bare.name).lower() in aliases:
        j = next(
            i
            for i, e in enumerate(ast.expressions)
            if isinstance(e, exp.Alias) and str(e.alias).lower() == str(bare.name).lower()
        )
    if j is not None:
        item = ast.expressions[j]
        if isinstance(item, exp.Star) or (
            isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
        ):
            raise _refuse("ORDER BY the position of * over several shards: name the column")
        ia, ib = _item_expr_span(st, items[j][0], items[j][1], item)
        return sqltext.span_text(st.text, toks, ia, ib), (toks[ia].start, toks[ib - 1].end)
    for col in term.find_all(exp.Column):
        if not col.table and str(col.name).lower() in aliases:
            raise _refuse(
                "ORDER BY expressions that use a select-list alias over several shards "
                "are not supported yet"
            )
    return sqltext.span_text(st.text, toks, a, b), (toks[a].start, toks[b - 1].end)


def _plan_aggregates(
    st: Statement,
    ast: exp.Select,
    p: _Merge,
    items: list[tuple[int, int]],
    head_span: tuple[int, int],
    from_char: int,
    tail_i: int,
) -> None:
    toks = st.toks
    specs: list[AggSpec] = []
    hidden: list[str] = []
    hidden_spans: list[tuple[int, int]] = []
    for idx, ((a, b), item) in enumerate(zip(items, ast.expressions, strict=True)):
        node = item.this if isinstance(item, exp.Alias) else item
        ia, ib = _item_expr_span(st, a, b, item)
        name = _agg_of(node)
        if name is None:
            raise _refuse(
                "over several shards, a SELECT with aggregates may only list aggregate "
                "calls (COUNT, SUM, MIN, MAX, AVG, TOTAL)"
            )
        if name not in ("count", "sum", "min", "max", "avg", "total"):
            raise _refuse(f"aggregate {name.upper()} over several shards is not supported yet")
        if isinstance(node, exp.Anonymous) and len(node.expressions) != 1:
            raise _refuse(f"{name}() with {len(node.expressions)} arguments")
        if any(isinstance(n, exp.Distinct) for n in node.walk()):
            raise _refuse(f"{name.upper()}(DISTINCT …) over several shards is not supported yet")
        if isinstance(item, exp.Filter) or node.find(exp.Filter) is not None:
            raise _refuse("aggregate FILTER clauses over several shards are not supported yet")
        if any(_contains_agg(arg) for arg in node.iter_expressions()):
            raise _refuse("nested aggregate calls")
        # the argument text: between the first '(' and its ')'
        lp = next((i for i in range(ia, ib) if toks[i].type == TokenType.L_PAREN), None)
        if lp is None or toks[ib - 1].type != TokenType.R_PAREN or lp != ia + 1:
            raise _refuse("over several shards, each aggregate must be a plain call")
        arg_span = (lp + 1, ib - 1)
        arg_text = sqltext.span_text(st.text, toks, *arg_span)
        arg_chars = (toks[lp].end, toks[ib - 1].start)
        probe = arg_text if name in ("min", "max") and not _has_params(st, arg_chars) else None
        collation = None
        inner = node.this if not isinstance(node, exp.Anonymous) else node.expressions[0]
        if isinstance(inner, exp.Collate):
            collation = str(inner.expression.name).upper()
        if name == "avg":
            specs.append(AggSpec("avg", idx, hidden=len(hidden)))
            hidden.append(f"TOTAL({arg_text})")
            hidden.append(f"COUNT({arg_text})")
            hidden_spans.extend([arg_chars, arg_chars])
        else:
            specs.append(AggSpec(name, idx, probe=probe, collation=collation))  # type: ignore[arg-type]
    hidden_sql = "".join(f", {h} AS __dosql_a{i}" for i, h in enumerate(hidden))
    body = (from_char, toks[tail_i].start if tail_i < len(toks) else len(st.text))
    p.pushed = st.text[:from_char].rstrip() + hidden_sql + " " + st.text[body[0] : body[1]].rstrip()
    p.pushed_params = st.spans_params([head_span, *hidden_spans, body])
    p.n_hidden = len(hidden)
    p.aggregates = tuple(specs)


# --------------------------------------------------------------------------- writes


def _plan_update_delete(st: Statement, ast: exp.Expression, vs: Any) -> Operator:
    target = ast.this if isinstance(ast.this, exp.Table) else None
    if target is None:
        raise _refuse("could not find the table this statement writes")
    tname = _table_name(target)
    tables = physical_tables(ast)
    names = [_table_name(t) for t in tables]
    table = _vs_table(vs, tname)
    if table.kind != "sharded":
        try:
            route = _whole_route(vs, names, write=True)
        except NotSupportedError:
            if table.kind != "unsharded":
                raise
            return RouterSideDml(st.text, dml.plan(st, ast, tname, vs))  # reads sharded tables
        return Write(st.text, route, table=tname)
    column = str(table.column).lower()
    moves = False
    if isinstance(ast, exp.Update):
        for assign in ast.expressions:
            cols = assign.this.expressions if isinstance(assign.this, exp.Tuple) else [assign.this]
            for col in cols:
                if isinstance(col, exp.Column) and str(col.name).lower() == column:
                    moves = True
    if moves or len(tables) > 1 or ast.args.get("from_") or ast.args.get("using"):
        # subqueries, joins, UPDATE … FROM, or rows that may move: answered router-side
        return RouterSideDml(st.text, dml.plan(st, ast, tname, vs))
    conds = where_conds(ast.args.get("where"), column, _names_for(target))
    refuse = None
    if ast.args.get("order") or ast.args.get("limit"):
        refuse = "UPDATE/DELETE with ORDER BY or LIMIT over several shards"
    return Write(st.text, Routing("sharded", table=tname, conds=conds), table=tname, refuse=refuse)


def _plan_insert(st: Statement, ast: exp.Insert, vs: Any) -> Operator:
    target = ast.this
    columns: list[str] | None = None
    if isinstance(target, exp.Schema):
        columns = [str(c.name).lower() for c in target.expressions]
        target = target.this
    if not isinstance(target, exp.Table):
        raise _refuse("could not find the table this INSERT writes")
    tname = _table_name(target)
    table = _vs_table(vs, tname)
    names = [_table_name(t) for t in physical_tables(ast)]
    if table.kind != "sharded":
        try:
            route = _whole_route(vs, names, write=True)
        except NotSupportedError:  # reads sharded tables: run the source through the router
            return _plan_insert_select(st, ast, tname, columns)
        return Write(st.text, route, table=tname)
    column = str(table.column).lower()
    source = ast.expression
    if ast.args.get("default"):
        raise _refuse(
            f"INSERT … DEFAULT VALUES into sharded table {tname}: the sharding column "
            f"{column} needs a value"
        )
    if not isinstance(source, exp.Values) or len(names) > 1:
        return _plan_insert_select(st, ast, tname, columns)
    conflict = ast.args.get("conflict")
    if conflict is not None:
        for assign in conflict.expressions or []:
            col = assign.this if isinstance(assign, exp.EQ) else None
            if isinstance(col, exp.Column) and str(col.name).lower() == column:
                raise _refuse(f"ON CONFLICT … DO UPDATE of sharding column {column}")
    key_index: int | None = None
    if columns is not None:
        # -1: the sharding column is not given (its default decides; NULL only where allowed)
        key_index = columns.index(column) if column in columns else -1
    # row spans: after VALUES at depth 0
    toks = st.toks
    vi = next((i for i, t in enumerate(toks) if t.type == TokenType.VALUES and t.depth == 0), None)
    if vi is None:
        raise _refuse("could not find VALUES in the INSERT text")
    rows_tok: list[tuple[int, int]] = []
    i = vi + 1
    while i < len(toks) and toks[i].type == TokenType.L_PAREN and toks[i].depth == 0:
        j = i + 1
        while not (toks[j].type == TokenType.R_PAREN and toks[j].depth == 0):
            j += 1
        rows_tok.append((i, j))
        i = j + 1
        if i < len(toks) and toks[i].type == TokenType.COMMA and toks[i].depth == 0:
            i += 1
        else:
            break
    tuples = source.expressions
    if len(rows_tok) != len(tuples):
        raise _refuse("could not match the VALUES rows to their text")
    rows: list[tuple[Value, int, int, tuple[int, ...]]] = []
    for (a, b), tup in zip(rows_tok, tuples, strict=True):
        vals = tup.expressions if isinstance(tup, exp.Tuple) else [tup]
        if key_index == -1:
            v = Value(const=None)
        elif key_index is not None:
            if key_index >= len(vals):
                raise QueryError(
                    f"{len(vals)} values for {len(columns or [])} columns", code="QUERY_ERROR"
                )
            v = value_of(vals[key_index])
            if v is None:  # an expression: evaluate the VALUES first, then route the rows
                return _plan_insert_select(st, ast, tname, columns)
        else:
            consts = [value_of(x) for x in vals]
            if any(c is None for c in consts):  # expressions: evaluate first, then route
                return _plan_insert_select(st, ast, tname, columns)
            v = Value(const=consts)  # resolved with the table's columns
        row_params = st.spans_params([(toks[a].start, toks[b].end)]) or ()
        rows.append((v, toks[a].start, toks[b].end, row_params))
    head, tail = toks[rows_tok[0][0]].start, toks[rows_tok[-1][1]].end
    p = Insert(
        st.text,
        table=tname,
        key_column=column,
        key_index=key_index,
        insert_rows=tuple(rows),
        insert_head=head,
        insert_tail=tail,
    )
    p.cache["head_params"] = st.spans_params([(0, head)]) or ()
    p.cache["tail_params"] = st.spans_params([(tail, len(st.text))]) or ()
    if ast.args.get("returning") is None and conflict is None and tail == len(st.text):
        # sequence tables: rows without a key take this path (their key is assigned)
        p.cache["as_select"] = (
            st.text[: toks[vi].start],
            st.text[toks[vi].start : tail],
            st.spans_params([(toks[vi].start, tail)]),
            tuple(columns) if columns is not None else None,
        )
    return Sequence(p)  # rows that leave their id out get one from the table's sequence


def _plan_insert_select(
    st: Statement, ast: exp.Insert, tname: str, columns: list[str] | None
) -> Operator:
    """INSERT … SELECT (or VALUES with expressions): the source runs through the router."""
    if ast.args.get("returning"):
        raise _refuse("RETURNING on an INSERT … SELECT that spans shards is not supported yet")
    if ast.args.get("conflict") is not None:
        raise _refuse("INSERT … SELECT … ON CONFLICT across shards is not supported yet")
    toks = st.toks
    start = next(
        (
            i
            for i, t in enumerate(toks)
            if i > 1
            and t.depth == 0
            and t.type in (TokenType.SELECT, TokenType.WITH, TokenType.VALUES)
        ),
        None,
    )
    if start is None:
        raise _refuse("could not find the SELECT of this INSERT")
    head = st.text[: toks[start].start]
    if _has_params(st, (0, toks[start].start)):
        raise _refuse("parameters before the SELECT of an INSERT … SELECT")
    return InsertSelect(
        st.text,
        table=tname,
        source_sql=st.text[toks[start].start :],
        source_params=st.spans_params([(toks[start].start, len(st.text))]),
        columns=tuple(columns) if columns is not None else None,
        insert_sql=head,
    )


# --------------------------------------------------------------------------- DDL


def _ident(toks: list[Tok], i: int) -> tuple[str, int]:
    """Table/index name at token i (schema-qualified allowed); returns (name, next index)."""
    if i >= len(toks):
        raise QueryError("incomplete statement: a name is missing", code="SYNTAX_ERROR")
    if i + 2 < len(toks) and toks[i + 1].type == TokenType.DOT:
        schema = toks[i].text.lower()
        if schema not in ("main",):
            raise _refuse(f"schema {toks[i].text}: only the main schema exists through the router")
        i += 2
    return toks[i].text.lower(), i + 1


def _skip_if_exists(words: list[str], i: int, *, negated: bool) -> tuple[bool, int]:
    pattern = ["IF", "NOT", "EXISTS"] if negated else ["IF", "EXISTS"]
    if words[i : i + len(pattern)] == pattern:
        return True, i + len(pattern)
    return False, i


def _table_targets(vs: Any, name: str) -> Routing:
    table = _vs_table(vs, name)
    if table.kind == "unsharded":
        return Routing("shard", shard=table.shard)
    return Routing("all")


def _plan_ddl(st: Statement, vs: Any) -> Operator:
    w, toks = st.words, st.toks
    if w[0] == "CREATE":
        i = 1
        if w[i] in ("TEMP", "TEMPORARY"):
            raise _refuse("temporary tables through the router (they would live on one shard)")
        if w[i] == "UNIQUE":
            i += 1
        kind = w[i]
        if kind == "TABLE":
            exists, i = _skip_if_exists(w, i + 1, negated=True)
            name, i = _ident(toks, i)
            if _is_internal(name) or name.startswith("_dosql"):
                raise QueryError(
                    f"table name {name} is reserved for internal tables", code="INTERNAL_TABLE"
                )
            if i < len(w) and w[i] == "AS":  # the SELECT runs router-side, then rows are routed
                if i + 1 >= len(toks):
                    raise QueryError("CREATE TABLE … AS needs a SELECT", code="SYNTAX_ERROR")
                if _has_params(st, (0, len(st.text))):
                    raise QueryError(
                        "parameters are not allowed in CREATE TABLE … AS", code="QUERY_ERROR"
                    )
                src = Statement(st.text[toks[i + 1].start :])
                src.views = st.views
                if not isinstance(src.ast, exp.Query):
                    raise QueryError("CREATE TABLE … AS needs a SELECT", code="SYNTAX_ERROR")
                source = RouterSide(src.text, gather.build(src, src.ast, vs))
                return CreateTableAs(st.text, name, source, if_exists=exists)
            if vs.has_table(name):
                table = vs.table(name)
                if table.kind == "sharded":
                    _require_sharding_column(st, name, str(table.column))
                learn = "listed" if table.kind == "sharded" else None
                return DDL(st.text, _table_targets(vs, name), "create_table", name, learn, exists)
            policy = vs.default_table
            if policy == "refuse":
                raise NotSupportedError(
                    f"table {name} is not in the VSchema and its default_table policy is "
                    f"'refuse': add {name} to the VSchema to create it",
                    details={"table": name},
                )
            if policy == "unsharded":
                routing = Routing("shard", shard=vs.default_shard)
            else:
                routing = Routing("all")
            return DDL(st.text, routing, "create_table", name, "policy", exists)
        if kind == "INDEX":
            _, i = _skip_if_exists(w, i + 1, negated=True)
            _, i = _ident(toks, i)
            if i >= len(w) or w[i] != "ON":
                raise QueryError("CREATE INDEX needs ON <table>", code="SYNTAX_ERROR")
            tname, _ = _ident(toks, i + 1)
            return DDL(st.text, _table_targets(vs, tname), "create_index", tname)
        if kind == "VIEW":
            exists, i = _skip_if_exists(w, i + 1, negated=True)
            name, i = _ident(toks, i)
            if vs.has_table(name):
                raise QueryError(f"table {name} already exists", code="QUERY_ERROR")
            if name in st.views and not exists:
                raise QueryError(f"view {name} already exists", code="QUERY_ERROR")
            as_i = next((j for j in range(i, len(w)) if w[j] == "AS" and toks[j].depth == 0), None)
            if as_i is None or as_i + 1 >= len(toks):
                raise QueryError("CREATE VIEW needs AS SELECT …", code="SYNTAX_ERROR")
            body = Statement(st.text[toks[as_i + 1].start :])
            if body.params.positional or body.params.named:
                raise QueryError("parameters are not allowed in views", code="QUERY_ERROR")
            body.ast  # noqa: B018 — parse now: a view the router cannot parse is refused here
            return ViewDDL(st.text, "create_view", name, exists or name in st.views)
        raise _refuse(f"CREATE {kind} through the router is not supported yet")
    if w[0] == "DROP":
        kind = w[1] if len(w) > 1 else ""
        exists, i = _skip_if_exists(w, 2, negated=False)
        if kind == "TABLE":
            name, _ = _ident(toks, i)
            if not vs.has_table(name):
                if exists:
                    return Noop(st.text)
                _vs_table(vs, name)
            return DDL(st.text, _table_targets(vs, name), "drop_table", name, if_exists=exists)
        if kind == "INDEX":
            return DropIndex(st.text, if_exists=exists)
        if kind == "VIEW":
            name, _ = _ident(toks, i)
            if name not in st.views:
                if exists:
                    return Noop(st.text)
                raise QueryError(f"no such view: {name}", code="QUERY_ERROR")
            return ViewDDL(st.text, "drop_view", name)
        raise _refuse(f"DROP {kind} through the router is not supported yet")
    if w[0] == "ALTER":
        if len(w) < 3 or w[1] != "TABLE":
            raise QueryError("ALTER must be ALTER TABLE", code="SYNTAX_ERROR")
        name, i = _ident(toks, 2)
        table = _vs_table(vs, name)
        rest = w[i:]
        if rest[:2] == ["RENAME", "TO"]:
            raise _refuse(f"renaming table {name}: the VSchema routes tables by name")
        column = str(table.column).lower() if table.kind == "sharded" else None
        if column and rest[:1] in (["RENAME"], ["DROP"]):
            j = i + 1 + (1 if len(rest) > 1 and rest[1] == "COLUMN" else 0)
            if j < len(toks) and toks[j].text.lower() == column:
                raise _refuse(f"renaming or dropping sharding column {column} of table {name}")
        return DDL(st.text, _table_targets(vs, name), "alter", name)
    raise _refuse(f"statement {w[0]} is not supported by the router")
