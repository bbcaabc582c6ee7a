"""The executor: plans statements (cached) and runs operator trees.

A plan (:mod:`dosql.router.engine`) is built once per statement text by the
planner and cached; running it binds the parameters. What the operators
need while they run — fanning out to shards (:mod:`.fanout`), what the
router knows about tables (:mod:`.catalog`), which shards a routing reaches
(:mod:`.routing`), the transaction a statement runs in (:mod:`.txscope`) —
are mixins of :class:`Executor`, which operators see as
:class:`dosql.router.engine.base.Services`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import trio

from dosql.errors import DoSQLError, NotSupportedError
from dosql.router import gather, placement, sequences
from dosql.router.catalog import Catalog, TableInfo
from dosql.router.engine.base import Context, Operator
from dosql.router.fanout import Fanout
from dosql.router.lake import Lake
from dosql.router.metrics import RouterMetrics
from dosql.router.planner import plan as make_plan
from dosql.router.pool import ShardPool, ShardResult
from dosql.router.routing import Targets
from dosql.router.session import ClientSession
from dosql.router.txscope import TxScope

log = logging.getLogger(__name__)

__all__ = ["Executor", "PlanCache", "TableInfo"]


class PlanCache:
    """Plans by statement text, least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.plans: OrderedDict[str, Operator] = OrderedDict()

    def get(self, sql: str) -> Operator | None:
        p = self.plans.get(sql)
        if p is not None:
            self.plans.move_to_end(sql)
        return p

    def put(self, sql: str, p: Operator) -> None:
        if self.size <= 0:
            return
        self.plans[sql] = p
        while len(self.plans) > self.size:
            self.plans.popitem(last=False)

    def clear(self) -> None:
        self.plans.clear()


class Executor(Catalog, Fanout, Targets, TxScope):
    def __init__(
        self,
        base: Any,
        pools: dict[str, ShardPool],
        *,
        max_parallel: int,
        plan_cache_size: int,
        metrics: RouterMetrics,
        query_timeout_ms: int | None = None,
    ) -> None:
        self.base = base
        self.vs = base
        self.learned: dict[str, dict[str, Any]] = {}
        self.pools = pools
        self.limiter = trio.CapacityLimiter(max_parallel)
        self.plans = PlanCache(plan_cache_size)
        self.metrics = metrics
        self.schema: dict[str, TableInfo] = {}
        self.query_timeout_ms = query_timeout_ms
        self.meta_loaded = False
        self.meta_version = -1
        self.key_types: dict[str, str] = {}
        self.ddl_stamps: dict[str, str] = {}
        self.meta_changes = 0
        self.blocked: dict[str, DoSQLError] = {}
        self.local_schemas: dict[str, gather.LocalSchema] = {}
        self.null_shards: dict[str, str] = {}  # table -> shard that holds NULL-key rows
        self.sequences: set[str] = set()  # tables whose keys the router assigns
        self.views: dict[str, str] = {}  # views created through the router: name -> DDL
        self.seq_ids = sequences.IdBlocks()  # this router's reserved id blocks
        self.seq_block = 1000  # ids reserved at a time (router.sequence_block)
        self.atomic_commit = True  # two-phase commit across shards (router.atomic_commit)
        self.query_memory_bytes: int | None = 512 << 20  # router.query_memory_mb
        self.lake: Lake | None = None  # time travel's lake (the router's [lake] section)

    def clear_plans(self) -> None:
        self.plans.clear()

    def plan(self, sql: str) -> Operator:
        if self.blocked:  # rare: a VSchema edit under rows (placement.py); checked first,
            refused = placement.refusal(self.blocked, sql)  # as a cached plan may name one
            if refused is not None:
                raise refused
        p = self.plans.get(sql)
        if p is not None:
            self.metrics.plan_hits.inc()
            return p
        self.metrics.plan_parses.inc()
        try:
            p = make_plan(sql, self.vs, self.views)
        except DoSQLError:
            raise
        except RecursionError:  # no 180 KB traceback per hostile statement
            raise NotSupportedError(
                "the statement is nested too deeply for the router to plan: flatten it"
            ) from None
        except Exception as exc:  # a planner gap must never turn into a wrong answer
            log.exception("planner failed", extra={"sql": sql[:200]})
            raise NotSupportedError(
                f"the router could not plan this statement ({type(exc).__name__}: {exc})"
            ) from None
        self.plans.put(sql, p)
        return p

    def context(self, session: ClientSession) -> Context:
        return Context(self, session)

    async def run_plan(
        self, p: Operator, params: Any, session: ClientSession, timeout_ms: int | None = None
    ) -> ShardResult:
        return await p.execute(Context(self, session, timeout_ms=timeout_ms), params)

    async def run_many(self, p: Operator, seq: list[Any], session: ClientSession) -> ShardResult:
        """executemany: param sets grouped per shard where the plan can, else one by one."""
        return await p.execute_many(Context(self, session), seq)
