"""Sequences: globally unique ids for the INTEGER PRIMARY KEY of sharded tables.

Which tables have one (:func:`spec_for`):

- a table listed in the VSchema with ``auto_increment = { column, sequence }``;
- a table created under ``default_table = "shard_by_primary_key"`` whose key
  is an INTEGER PRIMARY KEY (``"sequence": true`` in its metadata entry; the
  sequence is named after the table).

A listed sharded table whose INTEGER PRIMARY KEY (a rowid alias) is not its
sharding column and that names no sequence refuses rows without that key
(``SEQUENCE_REQUIRED``): each shard's own rowid counter would give the same
ids on every shard.

Where ids come from: each router takes blocks of ids (``router.sequence_block``,
1,000 by default) with one ``ReserveIds`` request to the default shard, which
keeps sequence state in a sidecar database (:mod:`dosql.shard.sequences`).
That request runs on a pooled connection of its own, never in the client's
transaction, and touches no lock of the shard's database: an id-less INSERT
works the same in autocommit, in the driver's default mode (an IMMEDIATE
transaction already holding the default shard's write lock) and inside a
deferred ``BEGIN`` (whose snapshot a write committed elsewhere would spoil).
A block is never below ``max(column) + 1`` of the table (read outside the
client's transaction as well), so ids given explicitly are not handed out.
Ids are unique across the cluster and increase per router; a router that
stops (or a block it drops) leaves a gap.

How rows get their ids: a one-row INSERT … VALUES (and ``executemany`` of
one) is rewritten in place — the id goes into the row's ``?``/``:name``
parameter, or the column is added to the column list with one more
parameter — and routed as usual. Everything else (several rows, ``NULL``
literals, expressions) is evaluated first and its rows routed with ids
filled in (``Executor.run_insert_select``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import sqlglot
import trio
from sqlglot.tokens import TokenType

from dosql import protocol
from dosql.errors import DoSQLError, QueryError, ValidationError
from dosql.router import sqltext
from dosql.router.plan import Value
from dosql.router.statement import value_of

if TYPE_CHECKING:
    from dosql.router.catalog import TableInfo
    from dosql.router.engine.base import Services as Executor
    from dosql.router.engine.insert import Insert as Plan

ID_PARAM = "__dosql_seq_id"  # the named parameter added for a column the INSERT left out


@dataclass(frozen=True)
class SeqSpec:
    """Table ``table`` fills ``column`` (lower case) from sequence ``sequence``."""

    table: str
    column: str
    sequence: str


def spec_for(ex: Executor, name: str) -> SeqSpec | None:
    """The sequence of table ``name``, if it has one."""
    key = name.lower()
    if ex.base.has_table(name):
        table = ex.base.table(name)
        ai = getattr(table, "auto_increment", None)
        if table.kind == "sharded" and ai is not None:
            return SeqSpec(key, ai.column.lower(), ai.sequence)
        return None
    if key in ex.sequences:  # learned under shard_by_primary_key: the key is the id
        return SeqSpec(key, str(ex.vs.table(name).column).lower(), key)
    return None


def guarded_column(ex: Executor, name: str, info: TableInfo | None) -> str | None:
    """A listed sharded table's rowid-alias column that needs a sequence it does not have."""
    if info is None or not ex.base.has_table(name):
        return None
    table = ex.base.table(name)
    if table.kind != "sharded" or getattr(table, "auto_increment", None) is not None:
        return None
    if len(info.pk) != 1:
        return None
    col = info.pk[0].lower()
    if str(info.types.get(col) or "").upper() != "INTEGER" or col == str(table.column).lower():
        return None
    return col


def check_column(spec: SeqSpec, info: TableInfo | None) -> None:
    """The table must have the column its VSchema ``auto_increment`` names."""
    if info is not None and spec.column not in [c.lower() for c in info.columns]:
        raise QueryError(
            f"table {spec.table} has no column {spec.column}, which the VSchema's "
            f"auto_increment fills from sequence {spec.sequence}: add the column (an INTEGER "
            "PRIMARY KEY) or change auto_increment",
            code="SEQUENCE_COLUMN_MISSING",
            details={"table": spec.table, "column": spec.column},
        )


def sequence_required(name: str, column: str) -> ValidationError:
    return ValidationError(
        f"INSERT into {name} leaves its INTEGER PRIMARY KEY {column} to SQLite, but every shard "
        f"counts rowids on its own, so ids would repeat across shards: give {column} a value, "
        f"or name a sequence for it in the VSchema: [tables.{name}] auto_increment = "
        f'{{ column = "{column}", sequence = "{name}_seq" }}',
        code="SEQUENCE_REQUIRED",
        details={"table": name, "column": column},
    )


# --------------------------------------------------------------------------- id blocks


class IdBlocks:
    """This router's reserved blocks: sequence -> [next id, end of block).

    ``seen`` is the highest id this router saw a client give explicitly: ids
    from there down are skipped, even while the row that holds one is still
    uncommitted (invisible to the ``max(column)`` read).
    """

    def __init__(self) -> None:
        self.blocks: dict[str, list[int]] = {}
        self.locks: dict[str, trio.Lock] = {}
        self.seen: dict[str, int] = {}

    async def take(
        self, sequence: str, n: int, block: int, reserve: Callable[[int], Awaitable[list[int]]]
    ) -> list[int]:
        """``n`` ids, increasing; ``reserve(size)`` returns a fresh ``[start, stop)``."""
        lock = self.locks.setdefault(sequence, trio.Lock())
        out: list[int] = []
        async with lock:
            while len(out) < n:
                cur = self.blocks.get(sequence)
                if cur is None or cur[0] >= cur[1]:
                    cur = await reserve(max(block, n - len(out)))
                    self.blocks[sequence] = cur
                    cur[0] = max(cur[0], self.seen.get(sequence, 0) + 1)
                    continue
                take = min(n - len(out), cur[1] - cur[0])
                out.extend(range(cur[0], cur[0] + take))
                cur[0] += take
        return out

    def observe(self, sequence: str, given: list[Any]) -> None:
        """Ids a client gave explicitly: never hand them (or any below) out from here on."""
        top = max((v for v in given if type(v) is int), default=None)
        if top is None or top < self.seen.get(sequence, 0):
            return
        self.seen[sequence] = top
        cur = self.blocks.get(sequence)
        if cur is not None and cur[0] <= top:
            cur[0] = min(top + 1, cur[1])

    def forget(self, sequence: str) -> None:
        self.blocks.pop(sequence, None)
        self.seen.pop(sequence, None)


async def next_ids(ex: Executor, spec: SeqSpec, n: int, session: Any) -> list[int]:
    """``n`` ids for a row of ``spec.table`` (blocks reserved on the default shard)."""

    async def reserve(size: int) -> list[int]:
        floor = max(await _floor(ex, spec, session), ex.seq_ids.seen.get(spec.sequence, 0) + 1)
        return await _reserve(ex, spec.sequence, size, floor)

    return await ex.seq_ids.take(spec.sequence, n, ex.seq_block, reserve)


async def _floor(ex: Executor, spec: SeqSpec, session: Any) -> int:
    """``max(column) + 1`` over the table, read outside the client's transaction.

    A table created inside that (still open) transaction is not visible
    outside it; then the read runs in the transaction, which already holds
    every shard it created the table on.
    """
    q = ex.plan(f"SELECT max({_quote(spec.column)}) FROM {_quote(spec.table)}")
    try:
        seen = await ex.run_plan(q, None, type(session)("admin"))
    except DoSQLError as exc:
        if session.tx is None or "no such table" not in exc.message:
            raise
        seen = await ex.run_plan(q, None, session)
    top = seen.rows[0][0] if seen.rows and isinstance(seen.rows[0][0], int) else 0
    return top + 1


async def _reserve(ex: Executor, sequence: str, size: int, floor: int) -> list[int]:
    """One ``ReserveIds`` on the default shard; retried once on a connection found dead."""
    pool = ex.pools[ex.vs.default_shard]

    async def call(c: Any) -> Any:
        return await c.call(
            lambda rid: protocol.ReserveIds(id=rid, name=sequence, count=size, floor=floor)
        )

    try:
        got = await pool.run(call)
    except DoSQLError as exc:  # a reservation may be lost, never repeated: safe to retry
        if exc.code != "SHARD_UNAVAILABLE" or not exc.details.get("lost"):
            raise
        got = await pool.run(call)
    info = got.info or {}
    return [int(info["start"]), int(info["stop"])]


# --------------------------------------------------------------------------- INSERT rows


@dataclass(frozen=True)
class Slot:
    """Where the id column of one VALUES row is: how the router can fill it in.

    ``absent``: not in the column list; ``param``: a lone ``?`` (``ref`` its
    index) or ``:name`` used nowhere else (``ref`` the name); ``value``: a
    literal (``const``); ``other``: an expression, or a name used twice.
    """

    kind: Literal["absent", "param", "value", "other"]
    ref: int | str | None = None
    const: Any = None

    def missing(self, params: Any) -> bool | None:
        """Whether the row leaves the id NULL (None: cannot tell before evaluating it)."""
        if self.kind == "absent":
            return True
        if self.kind == "param":
            return Value(param=self.ref).bind(params) is None
        if self.kind == "value":
            return self.const is None
        return None


def slots(p: Plan, column: str, info: TableInfo | None) -> list[Slot]:
    """The id column's :class:`Slot` in each VALUES row of ``p`` (cached on the plan)."""
    key = ("seq_slots", column)
    got = p.cache.get(key)
    if got is None:
        got = p.cache[key] = _slots(p, column, info)
    return got


def _slots(p: Plan, column: str, info: TableInfo | None) -> list[Slot]:
    columns = p.cache["as_select"][3] if "as_select" in p.cache else _columns_of(p)
    if columns is not None:
        if column not in columns:
            return [Slot("absent")] * len(p.insert_rows)
        pos = columns.index(column)
    elif info is not None and column in [c.lower() for c in info.columns]:
        pos = [c.lower() for c in info.columns].index(column)
    else:
        return [Slot("other")] * len(p.insert_rows)
    all_toks = sqltext.tokenize(p.text)
    named_uses: dict[str, int] = {}
    for i, t in enumerate(all_toks[:-1]):
        if t.type == TokenType.COLON and all_toks[i + 1].start == t.end:
            named_uses[all_toks[i + 1].text] = named_uses.get(all_toks[i + 1].text, 0) + 1
    return [
        _slot(p.text[s:e], pos, row_params, named_uses) for _v, s, e, row_params in p.insert_rows
    ]


def _columns_of(p: Plan) -> list[str] | None:
    """The INSERT's column list (lower case), or None when it gives none."""
    toks = sqltext.tokenize(p.text[: p.insert_head])
    close = _column_list_close(toks)
    if close is None:
        return None
    opened = max(
        i for i in range(close) if toks[i].type == TokenType.L_PAREN and toks[i].depth == 0
    )
    return [
        _unquote(t.text)
        for t in toks[opened + 1 : close]
        if t.depth == 1 and t.type != TokenType.COMMA
    ]


def _slot(row: str, pos: int, row_params: tuple[int, ...], named_uses: dict[str, int]) -> Slot:
    toks = sqltext.tokenize(row)
    items = sqltext.split_top(toks, 1, len(toks) - 1, 1)
    if pos >= len(items):
        return Slot("other")
    a, b = items[pos]
    item = toks[a:b]
    if len(item) == 1 and item[0].type == TokenType.PLACEHOLDER and item[0].text == "?":
        before = sum(1 for t in toks[:a] if t.type == TokenType.PLACEHOLDER and t.text == "?")
        return Slot("param", ref=row_params[before]) if before < len(row_params) else Slot("other")
    if len(item) == 2 and item[0].type == TokenType.COLON and item[1].start == item[0].end:
        name = item[1].text
        return Slot("param", ref=name) if named_uses.get(name) == 1 else Slot("other")
    text = row[item[0].start : item[-1].end]
    try:
        node = sqlglot.parse_one("SELECT " + text, read="sqlite").expressions[0]
    except Exception:
        return Slot("other")
    v = value_of(node)
    return Slot("value", const=v.const) if v is not None and v.param is None else Slot("other")


def _column_list_close(toks: list[sqltext.Tok]) -> int | None:
    """Token index of the ``)`` closing the column list (``toks``: the text up to the rows)."""
    if len(toks) >= 2 and toks[-1].type == TokenType.VALUES and toks[-2].type == TokenType.R_PAREN:
        return len(toks) - 2
    return None


def with_column(p: Plan, column: str, named: bool) -> str:
    """The one-row INSERT's text with ``column`` added to its column list and its row."""
    head = p.text[: p.insert_head]
    close = _column_list_close(sqltext.tokenize(head))
    if close is None:
        raise QueryError("could not find the column list of this INSERT", code="QUERY_ERROR")
    at = sqltext.tokenize(head)[close].start
    _v, _s, row_end, _pi = p.insert_rows[0]
    placeholder = f":{ID_PARAM}" if named else "?"
    return (
        head[:at]
        + f", {_quote(column)}"
        + head[at : p.insert_head]
        + p.text[p.insert_head : row_end - 1]
        + f", {placeholder})"
        + p.text[row_end:]
    )


def fill(p: Plan, slot: Slot, params: Any, new_id: int) -> Any:
    """``params`` with ``new_id`` for the row's id (``slot`` absent or param)."""
    if slot.kind == "param":
        if isinstance(slot.ref, int):
            out = list(params)
            out[slot.ref] = new_id
            return out
        return {**params, slot.ref: new_id}
    if isinstance(params, dict):
        return {**params, ID_PARAM: new_id}
    out = list(params or ())
    at = len(p.cache.get("head_params") or ()) + len(p.insert_rows[0][3])
    out.insert(at, new_id)
    return out


def is_named(params: Any) -> bool:
    return isinstance(params, dict)


# --------------------------------------------------------------------------- running


def given(slot: Slot, params: Any) -> Any:
    """The id a row gives explicitly (slot kind param or value)."""
    return slot.const if slot.kind == "value" else Value(param=slot.ref).bind(params)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in '"`[' and text[-1] in '"`]':
        text = text[1:-1]
    return text.lower()


__all__ = [
    "ID_PARAM",
    "check_column",
    "given",
    "IdBlocks",
    "SeqSpec",
    "Slot",
    "fill",
    "guarded_column",
    "is_named",
    "next_ids",
    "sequence_required",
    "slots",
    "spec_for",
    "with_column",
]
