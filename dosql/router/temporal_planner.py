"""Plans for statements that read history (``FOR SYSTEM_TIME AS OF``,
``VERSION``/``TIMESTAMP AS OF``, ``dosql_history()``, ``dosql_table_sql()``).

Only a statement whose text mentions one of them is parsed in the DoSQLite
dialect (:mod:`dosql.timetravel`); everything else goes the planner's normal
way untouched. The plan is a :class:`~dosql.router.engine.temporal.TemporalSelect`
over one source per table the statement reads (or a ``TemporalInsert``
around one), cached by statement text like every other plan.
"""

from __future__ import annotations

import re

from sqlglot import exp

from dosql import timetravel as tt
from dosql.errors import NotSupportedError
from dosql.router.engine.base import Operator
from dosql.router.engine.lake_source import (
    DDL_FUNCTION,
    LakeAsOf,
    LakeHistory,
    LakeTableSql,
    LiveTable,
    Source,
)
from dosql.router.engine.temporal import TemporalInsert, TemporalSelect
from dosql.timetravel.dialect import HISTORY_FUNCTION

_MARKERS = re.compile(
    rf"system_time|\b(?:version|timestamp)\s+as\s+of\b|{HISTORY_FUNCTION}|{DDL_FUNCTION}",
    re.IGNORECASE,
)


def plan_temporal(sql: str) -> Operator | None:
    """The plan of a statement that reads history, or None for an ordinary one.

    Errors of a statement that does read history (malformed timestamp, a
    write to a historical table, a statement kind that cannot read it) are
    raised here, at planning.
    """
    if _MARKERS.search(sql) is None:
        return None
    tree = tt.parse(sql)
    refs = tuple(tt.temporal_refs(tree))
    hists = tuple(tt.history_refs(tree))
    if not refs and not hists and not _ddl_tables(tree):
        return None
    if isinstance(tree, exp.Insert) and isinstance(tree.expression, exp.Query):
        if tree.args.get("with_") or tree.args.get("with") or tree.args.get("returning"):
            raise NotSupportedError(
                "INSERT … SELECT from history supports neither WITH nor RETURNING: "
                "select the rows, then insert them"
            )
        select = _select(sql, tree.expression, refs, hists)
        return TemporalInsert(sql, select, tree)
    if not isinstance(tree, exp.Query):
        raise NotSupportedError(
            "only SELECT (and INSERT … SELECT) can read FOR SYSTEM_TIME AS OF / "
            "dosql_history(); history is read-only"
        )
    return _select(sql, tree, refs, hists)


def _select(
    sql: str,
    tree: exp.Expression,
    refs: tuple[tt.TemporalRef, ...],
    hists: tuple[tt.HistoryRef, ...],
) -> TemporalSelect:
    sources: list[Source] = []
    rename: dict[int, str] = {}
    for ref in refs:
        rename[ref.index] = f"__dosql_asof_{ref.index}"
        sources.append(LakeAsOf(ref, rename[ref.index]))
    listing: dict[int, str] = {}
    for h in hists:
        listing[h.index] = f"__dosql_history_{h.index}"
        sources.append(LakeHistory(h, listing[h.index]))
    stripped = tt.strip(tree, rename, history=listing)
    for i, node in enumerate(_ddl_tables(stripped)):
        name = f"__dosql_table_sql_{i}"
        sources.append(LakeTableSql.of(node, name))
        alias = node.args.get("alias") or exp.TableAlias(
            this=exp.to_identifier(DDL_FUNCTION, quoted=True)
        )
        node.set("this", exp.to_identifier(name, quoted=True))
        node.set("alias", alias)
    loaded = {s.name.lower() for s in sources}
    sources.extend(LiveTable(name) for name in _live_tables(stripped, loaded))
    tt.keep_column_names(stripped, sql)
    lsn_sql = None
    if any(r.kind == "lsn" for r in refs):
        lsn_sql = tt.strip(tree, {r.index: r.table for r in refs}).sql(dialect=tt.DIALECT)
    return TemporalSelect(
        sql, refs, hists, tuple(sources), stripped.sql(dialect=tt.DIALECT), lsn_sql
    )


def _ddl_tables(tree: exp.Expression) -> list[exp.Table]:
    return [
        t
        for t in tree.find_all(exp.Table, bfs=False)
        if isinstance(t.this, exp.Anonymous) and t.this.name.lower() == DDL_FUNCTION
    ]


def _live_tables(tree: exp.Expression, loaded: set[str]) -> list[str]:
    """Current tables the statement reads (not CTEs, not table functions)."""
    ctes = {str(c.alias).lower() for c in tree.find_all(exp.CTE)}
    out: dict[str, str] = {}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # table-valued functions run in memory as they are
        low = table.name.lower()
        if low in loaded or low in ctes or low in out:
            continue
        out[low] = table.name
    return list(out.values())
