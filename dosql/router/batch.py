"""Routing the rows of an INSERT … VALUES to their shards, many rows at a time.

``executemany`` of a one-row INSERT routes every parameter set on its own
(1,000 a request from the driver). Everything that does not depend on the
row — the table's key position, whether NULL keys have a shard, the VSchema
lookup of table, vindex and key affinity — is worked out once per statement
here, so the per-row cost is binding the key and hashing it
(:meth:`vschema.VSchema.shard_router`). The checks and errors are the ones a
row routed alone gets, in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dosql.errors import NotSupportedError, QueryError, ValidationError
from dosql.router.plan import Value

if TYPE_CHECKING:
    import vschema
    from dosql.router.catalog import TableInfo


class InsertRouter:
    """The shard of each row of one planned INSERT … VALUES into a sharded table."""

    def __init__(
        self,
        p: Any,  # engine.insert.Insert: table, key_column, key_index, insert_rows
        info: TableInfo | None,
        vs: vschema.VSchema,
        null_shards: dict[str, str],
    ) -> None:
        name = p.table
        assert name is not None
        self.plan = p
        self.info = info
        self.key_index = p.key_index
        if self.key_index is None:
            if info is None:
                raise QueryError(f"no such table: {name}", code="TABLE_NOT_FOUND")
            lower = [c.lower() for c in info.columns]
            key = str(p.key_column).lower()
            if key not in lower:  # e.g. a table created on the shards, not through the router
                raise QueryError(
                    f"table {name} has no column {p.key_column}, the sharding column the "
                    f"VSchema gives it: name the columns of the INSERT, or fix the table",
                    code="SHARDING_COLUMN_MISSING",
                    details={"table": name, "column": p.key_column},
                )
            self.key_index = lower.index(key)
        key_col = str(p.key_column).lower()
        self.null_shard = null_shards.get(name.lower())
        # a NULL key goes to the table's NULL shard when it has one, unless the key
        # column was left out and its default supplies the value
        self.nullable = self.null_shard is not None and (
            p.key_index != -1 or (info is not None and info.defaults.get(key_col) is None)
        )
        self.route = vs.shard_router(name)

    def key_of(self, value: Value) -> Value:
        """The sharding key of a VALUES row (``value``: the row's entry in ``insert_rows``)."""
        p = self.plan
        if p.key_index is not None:
            return value
        vals = value.const
        assert self.key_index is not None
        if self.key_index >= len(vals):
            info = self.info
            raise QueryError(
                f"table {p.table} has {len(info.columns) if info else '?'} columns but "
                f"{len(vals)} values were supplied",
                code="QUERY_ERROR",
            )
        key = vals[self.key_index]
        if key is None:
            raise NotSupportedError(
                f"the value for sharding column {p.key_column} in an INSERT into {p.table} "
                "must be a literal or a parameter"
            )
        return key

    def shard_of(self, key: Value, params: Any) -> str:
        """The shard of the row whose sharding key is ``key`` under ``params``."""
        v = key.bind(params)
        if v is None:
            if self.nullable:
                assert self.null_shard is not None
                return self.null_shard
            raise self._null_key()
        return self.route(v)

    def group(self, seq: list[Any]) -> dict[str, list[Any]]:
        """executemany of a one-row INSERT: the parameter sets by shard, in given order."""
        key, shard_of, route = self.key_of(self.plan.insert_rows[0][0]), self.shard_of, self.route
        # a positional key in a list of parameters (what the wire carries) is read
        # directly: the same value Value.bind returns; everything else goes through it
        index = key.param if type(key.param) is int else -1
        per_shard: dict[str, list[Any]] = {}
        for params in seq:
            if (
                type(params) is list
                and 0 <= index < len(params)
                and (value := params[index]) is not None
            ):
                sid = route(value)
            else:
                sid = shard_of(key, params)
            if sid in per_shard:
                per_shard[sid].append(params)
            else:
                per_shard[sid] = [params]
        return per_shard

    def _null_key(self) -> ValidationError:
        p = self.plan
        details = {"table": p.table, "column": p.key_column}
        if p.key_index == -1:
            return ValidationError(
                f"INSERT into {p.table} must give a value for its sharding column {p.key_column}",
                code="SHARDING_KEY_NULL",
                details=details,
            )
        return ValidationError(
            f"INSERT into {p.table}: sharding column {p.key_column} is NULL; every row needs "
            "a value for it",
            code="SHARDING_KEY_NULL",
            details=details,
        )
