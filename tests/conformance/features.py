"""Tag a SQL statement with the features a sharding router has to handle.

Used by the runner's report to say *which* SQL shapes are refused or fail
(joins over several tables, correlated subqueries, compound selects …), so
the failures read as a to-do list rather than as thousands of lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import sqlglot
from sqlglot import exp

_AGGREGATES = (exp.AggFunc,)


def _tables(node: exp.Expression) -> list[exp.Table]:
    """Tables in this SELECT's own FROM/JOIN, not inside its subqueries."""
    out = []
    for source in [node.args.get("from_"), *(node.args.get("joins") or [])]:
        if source is None:
            continue
        for t in source.find_all(exp.Table):
            if t.find_ancestor(exp.Select) is node:
                out.append(t)
    return out


def _is_correlated(sub: exp.Select) -> bool:
    """A subquery naming a column its own FROM does not provide (unqualified names
    are resolved by the .test files' convention: columns are unique per table)."""
    own = {t.alias_or_name.lower() for t in sub.find_all(exp.Table)}
    return any(col.table and col.table.lower() not in own for col in sub.find_all(exp.Column))


@lru_cache(maxsize=20000)
def tags(sql: str) -> frozenset[str]:
    """Feature names for one statement; ``unparsed`` when sqlglot cannot read it."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except Exception:
        return frozenset({"unparsed"})
    if tree is None:
        return frozenset({"unparsed"})
    out: set[str] = set()
    if not isinstance(tree, exp.Query):
        out.add(type(tree).__name__.lower())
        return frozenset(out)
    for kind in (exp.Union, exp.Intersect, exp.Except):
        if tree.find(kind):
            out.add(f"compound:{kind.__name__.lower()}")
    selects = list(tree.find_all(exp.Select))
    for sel in selects:
        n = len(_tables(sel))
        if n >= 2:
            out.add("join:2" if n == 2 else "join:3+")
        if sel.args.get("joins") and any(j.args.get("on") for j in sel.args["joins"]):
            out.add("join:ON")
        if sel.args.get("distinct"):
            out.add("select distinct")
        if sel.args.get("group"):
            out.add("group by")
        if sel.args.get("having"):
            out.add("having")
        for projection in sel.expressions:
            aggs = [
                a for a in projection.find_all(*_AGGREGATES) if a.find_ancestor(exp.Select) is sel
            ]
            if aggs:
                out.add("aggregate")
                inner = projection.unalias()
                if not isinstance(inner, _AGGREGATES):
                    out.add("aggregate in expression")
            if any(isinstance(a, exp.Count) and a.find(exp.Distinct) for a in aggs):
                out.add("aggregate(DISTINCT)")
        if sel.args.get("order"):
            out.add("order by")
        if sel.args.get("limit") or sel.args.get("offset"):
            out.add("limit/offset")
    for sub in tree.find_all(exp.Subquery):
        inner = sub.this
        if isinstance(inner, exp.Select):
            parent = sub.parent
            if isinstance(parent, exp.From | exp.Join):
                out.add("derived table")
            elif isinstance(parent, exp.Exists):
                out.add("subquery:EXISTS")
            elif isinstance(parent, exp.In):
                out.add("subquery:IN")
            else:
                out.add("subquery:scalar")
            if _is_correlated(inner):
                out.add("subquery:correlated")
    for node in tree.find_all(exp.Exists):
        out.add("subquery:EXISTS")
        if isinstance(node.this, exp.Select) and _is_correlated(node.this):
            out.add("subquery:correlated")
    for node in tree.find_all(exp.In):
        if node.args.get("query"):
            out.add("subquery:IN")
    if tree.find(exp.Case):
        out.add("case")
    if tree.find(exp.Between):
        out.add("between")
    if not out - {"order by", "case", "between"}:
        out.add("simple select")
    return frozenset(out)


def breakdown(sqls: Iterable[str], all_sqls: Iterable[str]) -> list[tuple[str, int, int]]:
    """(feature, how many of ``sqls`` have it, how many of ``all_sqls`` have it),
    most frequent among ``sqls`` first."""
    hit = Counter(t for s in sqls for t in tags(s))
    seen = Counter(t for s in all_sqls for t in tags(s))
    return [(t, n, seen[t]) for t, n in hit.most_common()]
