"""The query router: plans SQL with the VSchema, runs it on shards, merges results.

Modules: :mod:`~dosql.router.planner` (sqlglot AST to plan),
:mod:`~dosql.router.plan` (plan dataclasses), :mod:`~dosql.router.merge`
(SQLite ordering and aggregate merges), :mod:`~dosql.router.executor`
(binding, routing, fan-out), :mod:`~dosql.router.pool` (shard connections),
:mod:`~dosql.router.transactions`, :mod:`~dosql.router.metadata`,
:mod:`~dosql.router.metrics`, :mod:`~dosql.router.server`.
"""
