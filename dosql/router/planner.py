"""From SQL text to a :class:`~dosql.router.plan.Plan` (sqlglot, SQLite dialect).

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
(:mod:`dosql.router.explain`); ``EXPLAIN QUERY PLAN`` goes to one shard.

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
import sqlite3
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from dosql.errors import NotFoundError, NotSupportedError, QueryError
from dosql.router import dml, gather, groupby, sqltext
from dosql.router.plan import AggSpec, Cond, Pin, Plan, RangeCond, Route, SortKey, Value
from dosql.router.sqltext import Tok

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


# --------------------------------------------------------------------------- values


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


# --------------------------------------------------------------------------- tables


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


def _whole_route(vs: Any, names: list[str], *, write: bool) -> Route:
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
        return Route("shard", shard=shards.pop())
    if any_ref:
        return Route("all") if write else Route("any")
    return Route("shard", shard=vs.default_shard)


# --------------------------------------------------------------------------- WHERE analysis


def _is_key_column(node: exp.Expression, column: str, names: set[str]) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    if not isinstance(node, exp.Column):
        return False
    if str(node.name).lower() != column:
        return False
    qual = str(node.table).lower() if node.table else ""
    return not qual or qual in names


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _cond(node: exp.Expression, column: str, names: set[str]) -> Cond | None:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.EQ):
        for col, val in ((node.this, node.expression), (node.expression, node.this)):
            if _is_key_column(col, column, names):
                v = value_of(val)
                if v is not None:
                    return Pin((v,))
        return None
    if isinstance(node, exp.In):
        if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
            return None
        if not _is_key_column(node.this, column, names):
            return None
        values = [value_of(e) for e in node.expressions]
        if not values or any(v is None for v in values):
            return None
        return Pin(tuple(v for v in values if v is not None))
    if isinstance(node, exp.Or):
        left = _cond(node.this, column, names)
        right = _cond(node.expression, column, names)
        if isinstance(left, Pin) and isinstance(right, Pin):
            return Pin(left.values + right.values)
        return None
    if isinstance(node, exp.Between):
        if node.args.get("symmetric") or not _is_key_column(node.this, column, names):
            return None
        low, high = value_of(node.args.get("low")), value_of(node.args.get("high"))
        if low is None or high is None:
            return None
        return RangeCond(low, high, True, True)
    ops = {exp.GT: (">", False), exp.GTE: (">", True), exp.LT: ("<", False), exp.LTE: ("<", True)}
    for cls, (op, inclusive) in ops.items():
        if type(node) is cls:
            if _is_key_column(node.this, column, names):
                v, direction = value_of(node.expression), op
            elif _is_key_column(node.expression, column, names):
                v, direction = value_of(node.this), "<" if op == ">" else ">"
            else:
                return None
            if v is None:
                return None
            if direction == ">":
                return RangeCond(v, None, inclusive, True)
            return RangeCond(None, v, True, inclusive)
    return None


def where_conds(where: exp.Expression | None, column: str, names: set[str]) -> tuple[Cond, ...]:
    out = []
    for c in _conjuncts(where.this if isinstance(where, exp.Where) else where):
        cond = _cond(c, column, names)
        if cond is not None:
            out.append(cond)
    return tuple(out)


def _names_for(t: exp.Table) -> set[str]:
    names = {str(t.name).lower()}
    if t.alias:
        names = {str(t.alias).lower()}
    return names


# --------------------------------------------------------------------------- planner


def plan(sql: str, vs: Any, views: dict[str, str] | None = None) -> Plan:
    """``views``: views created through the router, name (lower case) -> CREATE VIEW text."""
    st = Statement(sql)
    st.views = views or {}
    first = st.words[0]
    if first == "BEGIN":
        mode = st.words[1] if len(st.words) > 1 else "DEFERRED"
        return Plan(
            "tx",
            st.text,
            tx_op="begin",
            tx_mode="immediate" if mode in ("IMMEDIATE", "EXCLUSIVE") else "deferred",
        )
    if first in ("COMMIT", "END"):
        return Plan("tx", st.text, tx_op="commit")
    if first == "ROLLBACK":
        if "TO" in st.words:  # ROLLBACK [TRANSACTION] TO [SAVEPOINT] name
            return Plan("tx", st.text, tx_op="rollback_to", table=st.toks[-1].text.strip('"`[]'))
        return Plan("tx", st.text, tx_op="rollback")
    if first in ("SAVEPOINT", "RELEASE"):
        if len(st.toks) < 2:
            raise QueryError(f"{first} needs a savepoint name", code="SYNTAX_ERROR")
        op = "savepoint" if first == "SAVEPOINT" else "release"
        return Plan("tx", st.text, tx_op=op, table=st.toks[-1].text.strip('"`[]'))
    if first == "EXPLAIN":
        if len(st.toks) < 2:
            raise QueryError("EXPLAIN needs a statement to explain", code="SYNTAX_ERROR")
        m = _EXPLAIN.match(st.text)
        rest = st.text[m.end() :] if m else ""
        if not rest.strip():
            raise QueryError("EXPLAIN needs a statement to explain", code="SYNTAX_ERROR")
        inner = plan(rest, vs, views)  # views: EXPLAIN of a statement that reads one
        if m and m.group(1):  # EXPLAIN QUERY PLAN: SQLite's own plan, from one shard
            route = inner.route if inner.route and inner.route.kind == "shard" else Route("any")
            return Plan("read", st.text, route=route)
        return Plan("explain", st.text, inner=inner)
    if first in ("ATTACH", "DETACH"):
        raise _refuse(f"{first}: shards manage their own databases")
    if first in ("VACUUM", "ANALYZE", "REINDEX"):
        return Plan("write", st.text, route=Route("all"), is_write=True, needs_tx=False)
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


def _plan_pragma(st: Statement, vs: Any) -> Plan:
    write = "=" in st.words
    route = Route("shard", shard=vs.default_shard)
    for t in st.toks[1:]:
        if t.type in (TokenType.VAR, TokenType.IDENTIFIER, TokenType.STRING):
            name = t.text.lower()
            if vs.has_table(name):
                table = vs.table(name)
                if table.kind == "unsharded":
                    route = Route("shard", shard=table.shard)
                break
    if write:
        raise _refuse("PRAGMA assignments through the router: configure shards instead")
    return Plan("read", st.text, route=route)


# --------------------------------------------------------------------------- SELECT


def _plan_select(st: Statement, ast: exp.Expression, vs: Any) -> Plan:
    tables = physical_tables(ast)
    names = [_table_name(t) for t in tables]
    if st.views and any(n in st.views and not vs.has_table(n) for n in names):
        return Plan("read", st.text, gather=gather.build(st, ast, vs))  # views: router-side
    sharded = [n for n in names if not _is_internal(n) and _vs_table(vs, n).kind == "sharded"]
    if not sharded:
        try:
            return Plan("read", st.text, route=_whole_route(vs, names, write=False))
        except NotSupportedError:  # unsharded tables on several shards
            return Plan("read", st.text, gather=gather.build(st, ast, vs))
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
        p = Plan("read", st.text, gather=gather.build(st, ast, vs))
        co = _colocated(ast, tables, vs) if isinstance(ast, exp.Select) else None
        if co is not None:  # one shard holds every joined row: the statement as written
            p.route, p.table = co, co.table
            p.cache["colocated"] = sorted({_table_name(t) for t in tables})
            p.refuse_scatter = "a co-located join over several shards runs router-side"
        return p
    table = vs.table(name)
    conds = where_conds(ast.args.get("where"), str(table.column).lower(), _names_for(tables[0]))
    route = Route("sharded", table=name, conds=conds)
    p = Plan("read", st.text, route=route, table=name)
    try:
        _plan_merge(st, ast, p)
    except NotSupportedError as exc:
        # Still fine when the route pins a single shard; decided at run time.
        p.refuse_scatter = exc.message
    if p.refuse_scatter and ast.args.get("group"):
        try:
            p.group = groupby.plan(st, ast)
        except NotSupportedError:
            p.group = None
    # Always kept: the fallback when a pushdown turns out inexact at run time (a
    # shard row the merge would have dropped cannot be read, a GROUP BY name is a
    # column after all); used up front when the statement cannot be pushed down.
    try:
        p.gather = gather.build(st, ast, vs)
    except NotSupportedError:
        p.gather = None  # refused at run time if it needs several shards
    return p


def _colocated(ast: exp.Select, tables: list[exp.Table], vs: Any) -> Route | None:
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
            return Route("sharded", table=name, conds=conds)
    return None


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


def _plan_merge(st: Statement, ast: exp.Select, p: Plan) -> None:
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


def _has_params(st: Statement, span: tuple[int, int]) -> bool:
    if st.params.named:
        return any(t.type == TokenType.COLON and span[0] <= t.start < span[1] for t in st.toks)
    return bool(sqltext.positional_in(st.params, st.toks, [span]))


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
    p: Plan,
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


def _plan_update_delete(st: Statement, ast: exp.Expression, vs: Any) -> Plan:
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
            p = Plan("write", st.text, is_write=True, table=tname)  # reads sharded tables
            p.dml = dml.plan(st, ast, tname, vs)
            return p
        return Plan("write", st.text, route=route, is_write=True, table=tname)
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
        p = Plan("write", st.text, is_write=True, table=tname)
        p.dml = dml.plan(st, ast, tname, vs)
        return p
    conds = where_conds(ast.args.get("where"), column, _names_for(target))
    p = Plan(
        "write",
        st.text,
        route=Route("sharded", table=tname, conds=conds),
        is_write=True,
        table=tname,
    )
    if ast.args.get("order") or ast.args.get("limit"):
        p.refuse_scatter = "UPDATE/DELETE with ORDER BY or LIMIT over several shards"
    return p


def _plan_insert(st: Statement, ast: exp.Insert, vs: Any) -> Plan:
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
        return Plan("write", st.text, route=route, is_write=True, table=tname)
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
    p = Plan(
        "insert",
        st.text,
        route=Route("sharded", table=tname),
        is_write=True,
        table=tname,
        insert_rows=tuple(rows),
        insert_head=head,
        insert_tail=tail,
        key_column=column,
        key_index=key_index,
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
    return p


def _plan_insert_select(
    st: Statement, ast: exp.Insert, tname: str, columns: list[str] | None
) -> Plan:
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
    p = Plan("write", st.text, is_write=True, table=tname)
    p.source_sql = st.text[toks[start].start :]
    p.source_params = st.spans_params([(toks[start].start, len(st.text))])
    p.insert_columns = tuple(columns) if columns is not None else None
    p.insert_sql = head
    return p


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


def _table_targets(vs: Any, name: str) -> Route:
    table = _vs_table(vs, name)
    if table.kind == "unsharded":
        return Route("shard", shard=table.shard)
    return Route("all")


def _plan_ddl(st: Statement, vs: Any) -> Plan:
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
                p = Plan("ddl", st.text, is_write=True, table=name, ddl_action="create_table_as")
                p.if_exists = exists
                p.source_sql = st.text[toks[i + 1].start :]
                src = Statement(p.source_sql)
                src.views = st.views
                if not isinstance(src.ast, exp.Query):
                    raise QueryError("CREATE TABLE … AS needs a SELECT", code="SYNTAX_ERROR")
                p.gather = gather.build(src, src.ast, vs)
                return p
            p = Plan("ddl", st.text, is_write=True, table=name, ddl_action="create_table")
            p.if_exists = exists
            if vs.has_table(name):
                table = vs.table(name)
                if table.kind == "sharded":
                    _require_sharding_column(st, name, str(table.column))
                p.route = _table_targets(vs, name)
                p.ddl_learn = "listed" if table.kind == "sharded" else None
                return p
            policy = vs.default_table
            if policy == "refuse":
                raise NotSupportedError(
                    f"table {name} is not in the VSchema and its default_table policy is "
                    f"'refuse': add {name} to the VSchema to create it",
                    details={"table": name},
                )
            if policy == "unsharded":
                p.route = Route("shard", shard=vs.default_shard)
            else:
                p.route = Route("all")
            p.ddl_learn = "policy"
            return p
        if kind == "INDEX":
            _, i = _skip_if_exists(w, i + 1, negated=True)
            _, i = _ident(toks, i)
            if i >= len(w) or w[i] != "ON":
                raise QueryError("CREATE INDEX needs ON <table>", code="SYNTAX_ERROR")
            tname, _ = _ident(toks, i + 1)
            return Plan(
                "ddl",
                st.text,
                route=_table_targets(vs, tname),
                is_write=True,
                table=tname,
                ddl_action="create_index",
            )
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
            p = Plan("ddl", st.text, is_write=True, table=name, ddl_action="create_view")
            p.if_exists = exists or name in st.views
            return p
        raise _refuse(f"CREATE {kind} through the router is not supported yet")
    if w[0] == "DROP":
        kind = w[1] if len(w) > 1 else ""
        exists, i = _skip_if_exists(w, 2, negated=False)
        if kind == "TABLE":
            name, _ = _ident(toks, i)
            if not vs.has_table(name):
                if exists:
                    return Plan("noop", st.text, is_write=True)
                _vs_table(vs, name)
            return Plan(
                "ddl",
                st.text,
                route=_table_targets(vs, name),
                is_write=True,
                table=name,
                ddl_action="drop_table",
                if_exists=exists,
            )
        if kind == "INDEX":
            return Plan(
                "ddl",
                st.text,
                route=Route("all"),
                is_write=True,
                ddl_action="drop_index",
                tolerate_missing=True,
                if_exists=exists,
            )
        if kind == "VIEW":
            name, _ = _ident(toks, i)
            if name not in st.views:
                if exists:
                    return Plan("noop", st.text, is_write=True)
                raise QueryError(f"no such view: {name}", code="QUERY_ERROR")
            return Plan("ddl", st.text, is_write=True, table=name, ddl_action="drop_view")
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
        return Plan(
            "ddl",
            st.text,
            route=_table_targets(vs, name),
            is_write=True,
            table=name,
            ddl_action="alter",
        )
    raise _refuse(f"statement {w[0]} is not supported by the router")
