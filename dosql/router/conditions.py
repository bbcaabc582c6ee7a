"""WHERE analysis: which conjuncts pin or bound a table's sharding column.

A :class:`~dosql.router.plan.Pin` or :class:`~dosql.router.plan.RangeCond`
holds :class:`~dosql.router.plan.Value` s, so the shards they select are only
known when the statement runs with its parameters.
"""

from __future__ import annotations

from sqlglot import exp

from dosql.router.plan import Cond, Pin, RangeCond
from dosql.router.statement import value_of


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
