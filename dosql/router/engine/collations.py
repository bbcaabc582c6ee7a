"""The collations that text comparisons of a merge must use, probed on a shard.

A k-way merge and a MIN/MAX merge compare values in Python; they must use
the collation SQLite would (a column's declared COLLATE, or an explicit
one). An expression's collation is found by asking a shard how it compares
'a' with 'A' and with 'a ' — once per plan, cached by the operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dosql.errors import DoSQLError
from dosql.router import merge
from dosql.router.catalog import PROBE, collation_from_probe

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


async def probe(
    ctx: Context, specs: Sequence[Any], probe_from: str | None, sid: str, cache: dict[str, Any]
) -> list[str | None]:
    """Collations of ``specs`` (sort keys or MIN/MAX aggregates); None: unknown."""
    if "collations" in cache:
        return cache["collations"]
    out: list[str | None] = [None] * len(specs)
    probes: list[tuple[int, str]] = []
    for i, s in enumerate(specs):
        if s.collation:
            out[i] = s.collation if s.collation in merge.KNOWN_COLLATIONS else None
        elif s.probe is not None:
            probes.append((i, s.probe))
    if probes and probe_from:
        sql = "SELECT " + ",".join(PROBE.format(e=e, f=probe_from) for _, e in probes)
        try:
            r = await ctx.ex.on_shard(sid, lambda c: c.execute(sql), ctx.tx)
            row = r.rows[0]
            for k, (i, _) in enumerate(probes):
                out[i] = collation_from_probe(row[2 * k], row[2 * k + 1])
        except DoSQLError:
            return out  # unknown: text comparisons will be refused
    cache["collations"] = out
    return out
