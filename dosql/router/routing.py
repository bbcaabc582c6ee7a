"""Which shards a routing reaches, with the statement's parameters bound.

A :class:`~dosql.router.plan.Routing` holds conditions on the sharding column
(values or parameters); binding them under the column's affinity and
collation gives the shards. A text value only pins under the BINARY
collation; a condition that cannot be decided keeps every shard.

A mixin of :class:`dosql.router.executor.Executor` (uses its catalog).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dosql.errors import ValidationError
from dosql.router.catalog import TableInfo
from dosql.router.plan import Pin, RangeCond, Routing, Value

if TYPE_CHECKING:
    from dosql.router.pool import ShardPool
    from dosql.router.session import ClientSession


class Targets:
    vs: Any
    pools: dict[str, ShardPool]

    order: tuple[str, ...]  # the VSchema's shard order (Catalog.order)

    learn_column_type: Callable[..., Awaitable[TableInfo | None]]  # Catalog's

    async def targets(self, routing: Routing, params: Any, session: ClientSession) -> list[str]:
        route = routing
        assert route is not None
        if route.kind == "all":
            return list(self.order)
        if route.kind == "shard":
            return [route.shard]  # type: ignore[list-item]
        if route.kind == "any":
            tx = session.tx
            if tx is not None and tx.shards:
                return [tx.shards[0]]
            for sid in self.order:
                if self.pools[sid].healthy is not False:
                    return [sid]
            return [self.order[0]]
        # sharded
        name = route.table
        assert name is not None
        if not route.conds:
            return list(self.order)
        info = await self.learn_column_type(name, session.tx)
        if info is None:
            return list(self.order)
        result = set(self.order)
        for cond in route.conds:
            shards = self._cond_shards(name, cond, params, info)
            if shards is not None:
                result &= shards
        if not result:  # no row can match: any one shard gives the right (empty) answer
            return [self.order[0]]
        return [s for s in self.order if s in result]

    def _cond_shards(self, name: str, cond: Any, params: Any, info: TableInfo) -> set[str] | None:
        binary = info.key_collation == "BINARY"
        if isinstance(cond, Pin):
            values = self._bind_values(cond.values, params)
            out: set[str] = set()
            for v in values:
                if v is None:
                    continue
                if isinstance(v, str) and not binary:
                    return None
                try:
                    out.add(self.vs.shard_for(name, v))
                except ValidationError as exc:
                    if exc.code in ("VALUE_OUT_OF_RANGE", "SHARDING_KEY_NULL"):
                        continue
                    return None
            return out
        if isinstance(cond, RangeCond):
            low = cond.low.bind(params) if cond.low is not None else None
            high = cond.high.bind(params) if cond.high is not None else None
            if (cond.low is not None and low is None) or (cond.high is not None and high is None):
                return set()  # comparison with NULL matches nothing
            if (isinstance(low, str) or isinstance(high, str)) and not binary:
                return None
            try:
                return set(
                    self.vs.shards_for_range(
                        name,
                        low,
                        high,
                        low_inclusive=cond.low_inclusive,
                        high_inclusive=cond.high_inclusive,
                    )
                )
            except (ValidationError, TypeError):
                return None
        return None

    async def gather_targets(
        self, name: str, table: Any, pushed: list[Any], params: Any, session: ClientSession
    ) -> list[str]:
        if table.kind == "unsharded":
            return [table.shard]
        if table.kind == "reference":
            tx = session.tx
            if tx is not None and tx.shards:
                return [tx.shards[0]]
            return [
                next((s for s in self.order if self.pools[s].healthy is not False), self.order[0])
            ]
        conds = [c for conj in pushed for c in conj.conds]
        if not conds:
            return list(self.order)
        info = await self.learn_column_type(name, session.tx)
        if info is None:
            return list(self.order)
        result = set(self.order)
        for cond in conds:
            shards = self._cond_shards(name, cond, params, info)
            if shards is not None:
                result &= shards
        if not result:
            return [self.order[0]]
        return [s for s in self.order if s in result]

    def _bind_values(self, values: tuple[Value, ...], params: Any) -> list[Any]:
        return [v.bind(params) for v in values]
