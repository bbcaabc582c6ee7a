"""The operator interface, what an operator may use while it runs, and EXPLAIN's row type.

:class:`Services` is the executor seen from an operator (a Protocol, so the
engine never imports the executor); :class:`Context` adds what belongs to one
execution — the session (and its transaction), the shards a parent operator
already chose, and a row limit a parent may push down to the shards.

An operator is planned once per statement text and may be cached and run
concurrently by many sessions: it never holds parameter values or session
state. What it learns at run time that holds for every execution (probed
collations, a pushdown found inexact) goes in its own fields.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dosql.errors import QueryError
from dosql.router.pool import ShardResult
from dosql.router.session import ClientSession

if TYPE_CHECKING:
    import vschema
    from dosql.router.catalog import TableInfo
    from dosql.router.gather import LocalSchema
    from dosql.router.lake import Lake
    from dosql.router.metrics import RouterMetrics
    from dosql.router.plan import Routing
    from dosql.router.pool import ShardConnection, ShardPool
    from dosql.router.transactions import Transaction


class Services(Protocol):
    """The executor's services an operator relies on (see :mod:`dosql.router.executor`)."""

    vs: vschema.VSchema
    base: vschema.VSchema
    pools: dict[str, ShardPool]
    metrics: RouterMetrics
    query_timeout_ms: int | None
    null_shards: dict[str, str]
    sequences: set[str]
    views: dict[str, str]
    meta_changes: int  # bumped when an operator changes the shared metadata
    learned: dict[str, dict[str, Any]]
    schema: dict[str, TableInfo]
    local_schemas: dict[str, LocalSchema]
    seq_ids: Any  # sequences.IdBlocks
    seq_block: int
    atomic_commit: bool
    query_memory_bytes: int | None  # what one router-side result may take
    lake: Lake | None  # what time travel reads (None: the router has no [lake] section)

    @property
    def order(self) -> tuple[str, ...]: ...

    def plan(self, sql: str) -> Operator: ...

    def clear_plans(self) -> None: ...

    async def run_plan(self, p: Operator, params: Any, session: ClientSession) -> ShardResult: ...

    async def run_many(
        self, p: Operator, seq: list[Any], session: ClientSession
    ) -> ShardResult: ...

    async def targets(self, routing: Routing, params: Any, session: ClientSession) -> list[str]: ...

    async def gather_targets(
        self, name: str, table: Any, pushed: list[Any], params: Any, session: ClientSession
    ) -> list[str]: ...

    async def table_info(self, name: str, tx: Transaction | None = None) -> TableInfo | None: ...

    async def learn_column_type(self, name: str, tx: Transaction | None) -> TableInfo | None: ...

    async def local_schema(self, name: str, tx: Transaction | None) -> LocalSchema: ...

    async def binary_keys(self, names: tuple[str, ...], tx: Transaction | None) -> bool: ...

    async def learn_table(
        self, table: str, learn: str, sid: str, tx: Transaction | None
    ) -> None: ...

    async def forget_table(self, name: str, tx: Transaction | None) -> None: ...

    async def announce_ddl(self, name: str, tx: Transaction | None) -> None: ...

    async def on_shard(
        self,
        sid: str,
        fn: Callable[[ShardConnection], Awaitable[ShardResult]],
        tx: Transaction | None,
        *,
        retry: bool = False,
        write: bool = False,
    ) -> ShardResult: ...

    async def any_shard(
        self, first: str, run: Callable[[ShardConnection], Awaitable[ShardResult]]
    ) -> ShardResult: ...

    async def parallel(
        self,
        shard_ids: list[str],
        fn: Callable[[str, ShardConnection], Awaitable[Any]],
        tx: Transaction | None,
        *,
        retry: bool = False,
        write: bool = False,
    ) -> list[Any]: ...

    async def in_write_tx(
        self,
        session: ClientSession,
        targets: list[str],
        body: Callable[[Transaction | None], Awaitable[Any]],
        *,
        needs_tx: bool = True,
    ) -> Any: ...

    async def in_transaction(
        self, session: ClientSession, body: Callable[[Transaction], Awaitable[Any]]
    ) -> Any: ...

    async def abort(self, session: ClientSession, exc: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Context:
    """One execution: the services, the client's session, what parents decided."""

    ex: Services
    session: ClientSession
    targets: list[str] | None = None  # the shards a parent routed to (Scatter and above)
    shard_limit: int | None = None  # rows each shard needs at most (a Limit above a merge)
    timeout_ms: int | None = None  # the client's bound for this request (waits stay inside)

    @property
    def tx(self) -> Transaction | None:
        return self.session.tx

    @property
    def query_timeout_ms(self) -> int | None:
        """The bound this statement runs under: the router's, or the client's if shorter
        (a client that gives up after 5 s leaves no work running for 30)."""
        bounds = [t for t in (self.ex.query_timeout_ms, self.timeout_ms) if t]
        return min(bounds) if bounds else None

    def at(self, targets: list[str]) -> Context:
        return Context(self.ex, self.session, targets, self.shard_limit, self.timeout_ms)

    def limited(self, n: int | None) -> Context:
        if n == self.shard_limit:
            return self
        return Context(self.ex, self.session, self.targets, n, self.timeout_ms)


@dataclass(frozen=True, slots=True)
class Line:
    """One EXPLAIN row: an operator (or the SQL one shard gets) at a depth of the tree."""

    depth: int
    operator: str
    shard: str | None = None
    sql: str | None = None
    detail: str = ""

    def deeper(self, by: int = 1) -> Line:
        return Line(self.depth + by, self.operator, self.shard, self.sql, self.detail)


def indent(lines: list[Line], by: int = 1) -> list[Line]:
    return [line.deeper(by) for line in lines]


def shard_lines(targets: list[str], sql: str | None, detail: str = "") -> list[Line]:
    """The SQL each shard gets, one row a shard, below the operator that sends it."""
    return [Line(1, "shard", sid, sql, detail) for sid in targets]


def spread(targets: list[str], order: tuple[str, ...]) -> str:
    """How many shards a statement touches: single_shard, multi_shard or scatter."""
    if len(targets) == 1:
        return "single_shard"
    return "scatter" if len(targets) == len(order) else "multi_shard"


class Operator:
    """A node of a plan tree.

    ``kind`` names the statement class for metrics and the session rules
    (``read``, ``write``, ``insert``, ``ddl``, ``tx``, ``noop``, ``explain``);
    ``is_write`` says whether a read-only connection must be refused.
    """

    kind: ClassVar[str] = "read"
    is_write: ClassVar[bool] = False
    text: str

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        raise NotImplementedError

    async def execute_many(self, ctx: Context, seq: list[Any]) -> ShardResult:
        """executemany: by default each parameter set in turn, in one router transaction."""
        if self.kind == "read":
            raise QueryError("executemany() can only execute DML statements", code="QUERY_ERROR")
        return await run_each(self, ctx, seq)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        """The EXPLAIN rows of this subtree (depth 0 is this operator)."""
        return [Line(0, type(self).__name__, None, self.text)]


async def run_each(op: Operator, ctx: Context, seq: list[Any]) -> ShardResult:
    """Run ``op`` once per parameter set, all in one transaction (or the session's)."""
    ex, session = ctx.ex, ctx.session

    async def loop(tx: Any) -> ShardResult:
        sub = ClientSession(session.scope)
        sub.tx = tx
        total = ShardResult(rowcount=0)
        for params in seq:
            r = await ex.run_plan(op, params, sub)
            total.rowcount += max(r.rowcount, 0)
            total.lastrowid = r.lastrowid
        return total

    return await ex.in_write_tx(session, list(ex.order), loop)


def select_params(params: Any, keep: tuple[int, ...] | None) -> Any:
    """The parameters a piece of the statement uses (positional indices ``keep``)."""
    if keep is None or not isinstance(params, list | tuple):
        return params
    return [params[i] for i in keep if i < len(params)]


def combine(results: list[ShardResult]) -> ShardResult:
    """Several shards' replies to one write as one: rows appended, rowcounts added."""
    out = ShardResult(rowcount=0)
    counted = False
    for r in results:
        if r.columns and out.columns is None:
            out.columns, out.decltypes = r.columns, r.decltypes
        out.rows.extend(r.rows)
        if r.rowcount >= 0:
            out.rowcount += r.rowcount
            counted = True
        if r.lastrowid is not None:
            out.lastrowid = r.lastrowid
    if not counted:
        out.rowcount = -1
    if out.columns is None:
        out.columns = []
    return out
