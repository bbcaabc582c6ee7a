"""Planning UPDATE / DELETE on a sharded table that one shard cannot do by itself.

This is the planning half; :class:`dosql.router.engine.router_side_dml.RouterSideDml`
runs the plan.

Used when the statement has subqueries, joins or UPDATE … FROM, or when an
UPDATE assigns the sharding column (the row may move to another shard). The
router first answers a SELECT built from the statement's own text through the
gather engine (:mod:`dosql.router.gather`)::

    SELECT <target>.__dosql_shard, <target>.__dosql_rid, <SET expressions…>,
           <every column of the target>
      FROM <target> [, <FROM clause>] [WHERE …]

where the gathered copy of the target table carries, per row, the shard it
came from and its rowid there. Then, in one router transaction, each
affected row is changed on its own shard by rowid: ``UPDATE … SET c = ? WHERE
rowid = ?`` or ``DELETE … WHERE rowid = ?``; a row whose new sharding value
belongs to another shard is deleted there and inserted on its new shard.
Every value is computed by SQLite (in memory) from the rows as they were
before the statement, as SQLite itself does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.tokens import TokenType

from dosql.errors import NotSupportedError
from dosql.router import gather, sqltext
from dosql.router import statement as P
from dosql.router.engine.router_side import RouterSide
from dosql.router.gather import RID_COL, SHARD_COL


@dataclass(frozen=True)
class DmlSpec:
    op: str  # "update" | "delete"
    table: str
    qual: str  # how the SELECT names the target (alias or table name)
    sets: tuple[str, ...]  # assigned columns, in SET order (update)
    alternative: str  # "OR REPLACE" … or ""
    select: RouterSide  # the SELECT of the affected rows (``{columns}``: the target's)
    returning: str = ""  # "RETURNING …" text: then rows are changed one statement each


def plan(st: Any, ast: exp.Expression, tname: str, vs: Any) -> DmlSpec:

    toks = st.toks
    returning = ""
    ret_i = next(
        (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.RETURNING), None
    )
    if ret_i is not None:
        returning = st.text[toks[ret_i].start :]
        if P._has_params(st, (toks[ret_i].start, len(st.text))):
            raise NotSupportedError("parameters in RETURNING of a write that runs router-side")
        if any(
            t.depth == 0 and t.type in (TokenType.ORDER_BY, TokenType.LIMIT) for t in toks[ret_i:]
        ):
            raise NotSupportedError("ORDER BY/LIMIT after RETURNING")
    target = ast.this
    qual = str(target.alias) if target.alias else tname
    stops = {
        TokenType.FROM,
        TokenType.WHERE,
        TokenType.RETURNING,
        TokenType.ORDER_BY,
        TokenType.LIMIT,
    }
    sets: list[str] = []
    exprs: list[str] = []
    spans: list[tuple[int, int]] = []
    alternative = ""
    if isinstance(ast, exp.Update):
        op = "update"
        set_i = next(
            (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.SET), None
        )
        if set_i is None:
            raise NotSupportedError("could not find SET in this UPDATE")
        words = [t.text.upper() for t in toks[:set_i]]
        if len(words) > 2 and words[1] == "OR":
            alternative = "OR " + words[2]
            t_start = 3
        else:
            t_start = 1
        target_text = sqltext.span_text(st.text, toks, t_start, set_i)
        stop = next(
            (
                i
                for i in range(set_i + 1, len(toks))
                if toks[i].depth == 0 and toks[i].type in stops
            ),
            len(toks),
        )
        items = sqltext.split_top(toks, set_i + 1, stop, 0)
        if len(items) != len(ast.expressions):
            raise NotSupportedError("could not match the SET assignments to their text")
        for (a, b), assign in zip(items, ast.expressions, strict=True):
            col = assign.this
            if not isinstance(col, exp.Column) or toks[a + 1].type != TokenType.EQ:
                raise NotSupportedError(
                    "row-value assignments (SET (a, b) = …) on a sharded table that spans "
                    "shards are not supported yet"
                )
            sets.append(str(col.name))
            exprs.append(sqltext.span_text(st.text, toks, a + 2, b))
            spans.append((toks[a + 2].start, toks[b - 1].end))
        rest_i = stop
    else:
        op = "delete"
        from_i = next(
            (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.FROM), None
        )
        if from_i is None:
            raise NotSupportedError("could not find FROM in this DELETE")
        stop = next(
            (
                i
                for i in range(from_i + 1, len(toks))
                if toks[i].depth == 0 and toks[i].type in stops
            ),
            len(toks),
        )
        target_text = sqltext.span_text(st.text, toks, from_i + 1, stop)
        rest_i = stop
    end = toks[ret_i].start if ret_i is not None else len(st.text)
    rest = st.text[toks[rest_i].start : end] if rest_i < len(toks) and rest_i != ret_i else ""
    if rest[:4].upper() == "FROM":
        rest = ", " + rest[4:].lstrip()
    q = gather.quote(qual)
    select_list = [f"{q}.{SHARD_COL}", f"{q}.{RID_COL}", *exprs]
    sql = f"SELECT {', '.join(select_list)}, {{columns}} FROM {target_text} {rest}".rstrip()
    if rest:
        spans.append((toks[rest_i].start, end))
    sel_st = P.Statement(sql.replace("{columns}", f"{q}.*"))
    sel_st.views = st.views
    g = gather.build(sel_st, sel_st.ast, vs)
    g = gather.Gather(g.refs, g.allow_bare, g.from_names, g.uses_rowid, tag=tname, views=g.views)
    sel = RouterSide(sql, g, st.spans_params(spans))
    return DmlSpec(op, tname, qual, tuple(sets), alternative, sel, returning)
