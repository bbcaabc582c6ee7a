"""Plans as trees of small operators (the way Vitess's vtgate engine primitives work).

The planner (:mod:`dosql.router.planner`) turns a statement into a tree of
operators once per statement text; the executor runs a tree with the
statement's parameters. Each operator does one thing, holds only the fields
that thing needs, runs with ``execute(ctx, params)`` and describes itself for
EXPLAIN with ``describe(ctx, params)``:

- reads: :class:`~.route.Route` (the statement as written on one shard),
  :class:`~.sharded_read.ShardedRead` (one shard, the merge tree, or router-side),
  :class:`~.scatter.Scatter` (pushed-down SQL on several shards),
  :class:`~.concat.Concat`, :class:`~.merge_sort.MergeSort`,
  :class:`~.aggregate.Aggregate`, :class:`~.group_aggregate.GroupAggregate`,
  :class:`~.limit.Limit`, :class:`~.router_side.RouterSide` (in-memory SQLite);
- writes: :class:`~.write.Write`, :class:`~.insert.Insert`,
  :class:`~.sequence.Sequence`, :class:`~.insert_select.InsertSelect`,
  :class:`~.router_side_dml.RouterSideDml`;
- schema: :class:`~.ddl.DDL`, :class:`~.ddl.DropIndex`, :class:`~.views.ViewDDL`,
  :class:`~.create_table_as.CreateTableAs`;
- history: :class:`~.temporal.TemporalSelect`, :class:`~.temporal.TemporalInsert`
  over the sources of :mod:`.lake_source` (``LakeAsOf``, ``LakeHistory``,
  ``LakeTableSql``, ``LiveTable``);
- sessions: :class:`~.transaction.Transaction`, :class:`~.transaction.Savepoint`,
  :class:`~.noop.Noop`, :class:`~.explain.Explain`.

Operators reach shards, schema knowledge and transactions through
:class:`~.base.Context` only, so no operator imports the executor or the
planner (``tests/router/test_import_graph.py`` keeps it that way).
"""
