"""GROUP BY over several shards by partial aggregation.

For a single-table SELECT … GROUP BY whose select list holds only GROUP BY
expressions and plain COUNT/SUM/TOTAL/MIN/MAX/AVG calls, each shard computes
per-group partials::

    SELECT <g1> AS __g0, …, count(x) AS __a0, sum(y) AS __a1, … FROM … WHERE … GROUP BY …

and the router loads every shard's partials into an in-memory SQLite table
``__partials`` and runs the final step there::

    SELECT __g0, sum(__a0), sum(__a1), … FROM __partials GROUP BY __g0 HAVING … ORDER BY … LIMIT …

COUNT merges as SUM, SUM as SUM, TOTAL as TOTAL, MIN/MAX as MIN/MAX and AVG
as TOTAL(partial totals) / SUM(partial counts). Each ``__partials`` column
that is grouped or compared (group keys, MIN/MAX) is declared with the
collation the expression has on the shards (probed once per plan), so
grouping and MIN/MAX compare exactly as on one database. HAVING and ORDER BY
are rewritten by token: aggregate calls become their merged form, column
names that are GROUP BY columns become their ``__g`` column. Anything else
(DISTINCT aggregates, GROUP_CONCAT, parameters outside WHERE, other columns)
raises NotSupportedError and the statement falls back to the gather plan.

Name resolution follows SQLite (checked against sqlite3 itself): in GROUP BY
and HAVING a bare name is the table's column when the table has a column of
that name, and a select-list alias only otherwise; in ORDER BY a term that is
just a name (in parentheses or with COLLATE too) is the alias first. Which
names are columns is known only at run time, so a plan that read a name as an
alias records it in ``shadow``; the executor re-plans with the table's column
names when one of them is a column (:func:`needs_columns`).

Type affinity: a group key that is a column (or a CAST) keeps its affinity in
SQLite, so ``HAVING a = '3'`` on an INTEGER column converts '3'. The
``__partials`` column of such a key is declared with that affinity
(``affinity``: the column name, resolved to its declared type at run time, or
the CAST type), so the final step compares exactly as on one database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp
from sqlglot.tokens import TokenType

from dosql.errors import NotSupportedError
from dosql.router import sqltext
from dosql.router import statement as P

_AGGS = ("count", "sum", "total", "min", "max", "avg")
_IDENT = (TokenType.VAR, TokenType.IDENTIFIER)


@dataclass
class GroupPlan:
    pushed: str
    pushed_params: tuple[int, ...] | None
    columns: list[str]  # __partials columns
    probes: list[str | None]  # expression to probe each column's collation with (None: none)
    final: str
    from_text: str  # FROM clause text, for collation probes
    names: list[tuple[str, str | None]]  # per output column: (name or column ref, kind)
    # alias names read as aliases that would mean the table's column if it has one
    shadow: frozenset[str] = frozenset()
    # per group column: ("column", name) / ("type", declared type) / None (no affinity)
    affinity: list[tuple[str, str] | None] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)


def needs_columns(g: GroupPlan, table_columns: frozenset[str]) -> bool:
    """Whether ``g`` read a name as an alias although the table has a column of that name."""
    return bool(g.shadow & table_columns)


def affinity_type(declared: str | None) -> str:
    """SQLite's affinity of a declared type (datatype3 §3.1), as a type name declaring it."""
    t = (declared or "").upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t:
        return ""
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def _affinity_source(node: exp.Expression | None) -> tuple[str, str] | None:
    """Where an expression's affinity comes from (SQLite: a column or a CAST; else none)."""
    while isinstance(node, exp.Paren | exp.Collate | exp.Alias):
        node = node.this
    if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
        return ("column", str(node.name).lower())
    if isinstance(node, exp.Cast) and node.args.get("to") is not None:
        return ("type", affinity_type(node.args["to"].sql(dialect="sqlite")))
    return None


def _bare_name(toks: list[Any], a: int, b: int) -> str | None:
    """The name an ORDER BY term [a, b) consists of (parentheses, COLLATE, ASC/DESC aside)."""
    while b > a and toks[b - 1].text.upper() in ("ASC", "DESC", "FIRST", "LAST", "NULLS"):
        b -= 1
    if b - a >= 3 and toks[b - 2].text.upper() == "COLLATE":
        b -= 2
    while (
        b - a >= 3 and toks[a].type == TokenType.L_PAREN and toks[b - 1].type == TokenType.R_PAREN
    ):
        a, b = a + 1, b - 1
    if b - a == 1 and toks[a].type in _IDENT:
        return toks[a].text.strip('"`[]').lower()
    return None


def _norm(text: str) -> str:
    return "".join(text.split()).lower()


def _fail(why: str) -> NotSupportedError:
    return NotSupportedError(why)


def plan(st: Any, ast: exp.Select, columns: frozenset[str] | None = None) -> GroupPlan:
    """The partial-aggregation plan; ``columns``: the table's column names, when known."""

    toks = st.toks
    if ast.args.get("distinct") or ast.args.get("windows"):
        raise _fail("DISTINCT/WINDOW with GROUP BY")
    if any(isinstance(n, exp.Window) for n in ast.walk()):
        raise _fail("window functions")
    if toks[0].type != TokenType.SELECT:
        raise _fail("SELECT form")
    from_i = next(
        (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.FROM), None
    )
    if from_i is None:
        raise _fail("no FROM")
    clauses = P._clause_starts(st, from_i)
    gb = clauses.get(TokenType.GROUP_BY)
    if gb is None:
        raise _fail("no GROUP BY")
    end = len(toks)
    after = [i for k, i in clauses.items() if i > gb]
    gb_end = min(after + [end])
    having_i = clauses.get(TokenType.HAVING)
    order_i = clauses.get(TokenType.ORDER_BY)
    limit_i = clauses.get(TokenType.LIMIT)
    tail_start = min([i for i in (having_i, order_i, limit_i) if i is not None] + [end])
    if tail_start < end and P._has_params(st, (toks[tail_start].start, len(st.text))):
        raise _fail("parameters after GROUP BY")
    items = sqltext.split_top(toks, 1, from_i, 0)
    if len(items) != len(ast.expressions):
        raise _fail("select list")
    if P._has_params(st, (0, toks[from_i].start)):
        raise _fail("parameters in the select list")
    # group terms (positions and aliases resolved to expression text)
    aliases: dict[str, str] = {}
    alias_nodes: dict[str, exp.Expression] = {}
    item_texts: list[str] = []
    for (a, b), item in zip(items, ast.expressions, strict=True):
        ia, ib = P._item_expr_span(st, a, b, item)
        item_texts.append(sqltext.span_text(st.text, toks, ia, ib))
        if isinstance(item, exp.Alias):
            aliases[str(item.alias).lower()] = item_texts[-1]
            alias_nodes[str(item.alias).lower()] = item.this
    unresolved = columns is None  # names read as aliases must be checked at run time
    known = columns if columns is not None else frozenset()
    # names that are aliases in GROUP BY/HAVING: those that are not (known) columns
    usable = {n for n in aliases if n not in known}
    shadow: set[str] = set()
    group_nodes = list(ast.args["group"].expressions)
    group_spans = sqltext.split_top(toks, gb + 1, gb_end, 0)
    if len(group_nodes) != len(group_spans):
        raise _fail("could not match GROUP BY terms to their text")
    groups: list[str] = []
    affinity: list[tuple[str, str] | None] = []
    for (a, b), gnode in zip(group_spans, group_nodes, strict=True):
        text = sqltext.span_text(st.text, toks, a, b)
        name = text.strip('"`[]').lower()
        source: exp.Expression | None = gnode
        if b - a == 1 and toks[a].type == TokenType.NUMBER and text.isdigit():
            j = int(text) - 1
            if not 0 <= j < len(item_texts):
                raise _fail("GROUP BY position out of range")
            text, source = item_texts[j], ast.expressions[j]
        elif b - a == 1 and toks[a].type in _IDENT and name in usable:
            if unresolved:
                shadow.add(name)  # a column of this name would win: checked at run time
            text, source = aliases[name], alias_nodes[name]
        groups.append(text)
        affinity.append(_affinity_source(source))
    gnorm = {_norm(g): i for i, g in enumerate(groups)}
    columns = [f"__g{i}" for i in range(len(groups))]  # from here on: __partials columns
    probes: list[str | None] = list(groups)
    partial_sql = [f"{g} AS __g{i}" for i, g in enumerate(groups)]
    agg_cache: dict[str, str] = {}

    def add_partial(expr_text: str, probe: str | None) -> str:
        name = f"__a{len(columns) - len(groups)}"
        columns.append(name)
        probes.append(probe)
        partial_sql.append(f"{expr_text} AS {name}")
        return name

    def merge_call(func: str, arg: str, star: bool) -> str:
        key = f"{func}({_norm(arg)})"
        if key in agg_cache:
            return agg_cache[key]
        a = "*" if star else arg
        if func == "count":
            out = f"sum({add_partial(f'count({a})', None)})"
        elif func in ("sum", "total"):
            out = f"{func}({add_partial(f'{func}({a})', None)})"
        elif func in ("min", "max"):
            out = f"{func}({add_partial(f'{func}({a})', arg)})"
        else:  # avg
            t = add_partial(f"total({a})", None)
            c = add_partial(f"count({a})", None)
            out = f"(total({t}) / sum({c}))"
        agg_cache[key] = out
        return out

    final_items: list[str] = []
    names: list[tuple[str, str | None]] = []
    for (a, b), item, text in zip(items, ast.expressions, item_texts, strict=True):
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Star) or (
            isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
        ):
            raise _fail("* with GROUP BY")
        if _norm(text) in gnorm:
            expr_text = f"__g{gnorm[_norm(text)]}"
        else:
            expr_text = _rewrite(st, *P._item_expr_span(st, a, b, item), gnorm, merge_call, {})
        if isinstance(item, exp.Alias):
            final_items.append(f"{expr_text} AS {sqltext.span_text(st.text, toks, b - 1, b)}")
            names.append((str(item.alias), None))
        elif isinstance(node, exp.Column):
            final_items.append(expr_text)
            names.append((str(node.name), "column"))
        else:
            final_items.append(expr_text)
            names.append((text, None))
    tail = ""
    if having_i is not None:
        h_end = min([i for i in (order_i, limit_i) if i is not None and i > having_i] + [end])
        kept: set[str] = set()
        tail += " HAVING " + _rewrite(st, having_i + 1, h_end, gnorm, merge_call, usable, kept)
        if unresolved:
            shadow |= kept
    if order_i is not None:
        o_end = limit_i if limit_i is not None and limit_i > order_i else end
        terms: list[str] = []
        for a, b in sqltext.split_top(toks, order_i + 1, o_end, 0):
            if _bare_name(toks, a, b) in aliases:  # ORDER BY alias: the alias, always
                terms.append(sqltext.span_text(st.text, toks, a, b))
                continue
            kept = set()
            terms.append(_rewrite(st, a, b, gnorm, merge_call, usable, kept))
            if unresolved:
                shadow |= kept
        tail += " ORDER BY " + ", ".join(terms)
    if limit_i is not None:
        tail += " " + st.text[toks[limit_i].start :]
    where_end = toks[gb].start
    body = st.text[toks[from_i].start : where_end].rstrip()
    group_text = ", ".join(groups)
    pushed = f"SELECT {', '.join(partial_sql)} {body} GROUP BY {group_text}"
    final = (
        f"SELECT {', '.join(final_items)} FROM __partials "
        f"GROUP BY {', '.join(columns[: len(groups)])}{tail}"
    )
    from_end = min([i for i in clauses.values() if i > from_i] + [end])
    return GroupPlan(
        pushed=pushed,
        pushed_params=st.spans_params([(toks[from_i].start, where_end)]),
        columns=columns,
        probes=probes,
        final=final,
        from_text=sqltext.span_text(st.text, toks, from_i + 1, from_end),
        names=names,
        shadow=frozenset(shadow),
        affinity=affinity,
    )


def _rewrite(
    st: Any,
    a: int,
    b: int,
    gnorm: dict[str, int],
    merge_call: Any,
    aliases: set[str],
    kept: set[str] | None = None,
) -> str:
    """Text of tokens [a, b) with aggregate calls merged and group columns renamed.

    Names in ``aliases`` that are not group terms stay as written (the final step
    resolves them to its select-list aliases); they are added to ``kept``.
    """
    toks = st.toks
    out: list[str] = []
    pos = toks[a].start if a < b else 0
    i = a
    while i < b:
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < b else None
        low = t.text.lower()
        if nxt is not None and nxt.type == TokenType.L_PAREN and low in _AGGS:
            j = i + 2
            depth = 1
            while j < b and depth:
                if toks[j].type == TokenType.L_PAREN:
                    depth += 1
                elif toks[j].type == TokenType.R_PAREN:
                    depth -= 1
                j += 1
            if depth:
                raise _fail("unbalanced call")
            inner = toks[i + 2 : j - 1]
            if any(
                x.type in (TokenType.DISTINCT, TokenType.COMMA)
                for x in inner
                if x.depth == t.depth + 1
            ):
                raise _fail(f"{low}() form")
            if low in ("min", "max") and any(
                x.type == TokenType.COMMA and x.depth == t.depth + 1 for x in inner
            ):
                raise _fail("scalar min/max")
            star = len(inner) == 1 and inner[0].type == TokenType.STAR
            if not inner or (star and low != "count"):
                raise _fail(f"{low}() arguments")
            arg = sqltext.span_text(st.text, toks, i + 2, j - 1)
            if any(
                x.text.lower() in _AGGS and toks[k + 1].type == TokenType.L_PAREN
                for k, x in enumerate(toks[i + 2 : j - 1], start=i + 2)
                if k + 1 < j
            ):
                raise _fail("nested aggregates")
            out.append(st.text[pos : t.start])
            out.append(merge_call(low, arg, star))
            pos = toks[j - 1].end
            i = j
            continue
        if t.type in _IDENT:
            if nxt is not None and nxt.type == TokenType.L_PAREN:
                i += 1  # a scalar function name
                continue
            if nxt is not None and nxt.type == TokenType.DOT:
                raise _fail("qualified column after GROUP BY")
            if low in ("collate",):
                i += 1
                continue
            prev = toks[i - 1] if i > 0 else None
            if prev is not None and prev.text.upper() == "COLLATE":
                i += 1
                continue
            key = _norm(t.text.strip('"`[]'))
            if key in gnorm:
                out.append(st.text[pos : t.start])
                out.append(f"__g{gnorm[key]}")
                pos = t.end
            elif low.strip('"`[]') not in aliases:
                raise _fail(f"column {t.text} is neither grouped nor aggregated")
            elif kept is not None:
                kept.add(low.strip('"`[]'))
        i += 1
    out.append(st.text[pos : toks[b - 1].end] if a < b else "")
    return "".join(out)


def run_final(
    g: GroupPlan,
    collations: list[str | None],
    rows: list[list[Any]],
    timeout_ms: int | None,
    types: list[str] | None = None,
) -> list[list[Any]]:
    """Load the partials and run the final step.

    Each ``__partials`` column gets the probed collation and, for group keys,
    ``types`` (the key's affinity; aggregates stay typeless, as SQLite's are).
    """
    from dosql.shard.errormap import map_error

    types = types or []
    con = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        decl = ", ".join(
            " ".join(
                x
                for x in (c, types[i] if i < len(types) else "", f"COLLATE {coll}" if coll else "")
                if x
            )
            for i, (c, coll) in enumerate(zip(g.columns, collations, strict=True))
        )
        con.execute(f"CREATE TABLE __partials ({decl})")
        con.execute("BEGIN")
        con.executemany(f"INSERT INTO __partials VALUES ({', '.join('?' * len(g.columns))})", rows)
        con.execute("COMMIT")
        try:
            return [list(r) for r in con.execute(g.final).fetchall()]
        except sqlite3.Error as exc:
            raise map_error(exc) from None
    finally:
        con.close()
