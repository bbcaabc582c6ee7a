"""The query router: plans SQL with the VSchema, runs it on shards, merges results.

A statement goes: :mod:`~dosql.router.server` (client protocol, sessions) →
:mod:`~dosql.router.executor` (plan cache, runs a plan) →
:mod:`~dosql.router.planner` (sqlglot AST to a tree of operators) →
:mod:`~dosql.router.engine` (the operators: Route, Scatter, MergeSort,
Aggregate, GroupAggregate, Limit, RouterSide, Insert, Sequence, Write, DDL …).

Below the planner: :mod:`~dosql.router.statement` (text, tokens, AST
helpers), :mod:`~dosql.router.conditions` (WHERE → routing conditions),
:mod:`~dosql.router.plan` (routings, values, sort keys),
:mod:`~dosql.router.gather` / :mod:`~dosql.router.groupby` /
:mod:`~dosql.router.dml` (the planning halves of router-side reads, partial
aggregation and router-side writes), :mod:`~dosql.router.merge` (SQLite
ordering and aggregate merges). The executor's services to operators:
:mod:`~dosql.router.fanout`, :mod:`~dosql.router.catalog`,
:mod:`~dosql.router.routing`, :mod:`~dosql.router.txscope`; and
:mod:`~dosql.router.pool`, :mod:`~dosql.router.transactions`,
:mod:`~dosql.router.metadata`, :mod:`~dosql.router.metrics`.
"""
