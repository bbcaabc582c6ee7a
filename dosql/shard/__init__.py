"""The shard: one OS process owning one SQLite database, with transactional change capture.

Modules: ``database`` (connections, pragmas, authorizer), ``capture``
(internal tables, triggers, schema events), ``changelog`` (the ChangeLog API
used by the CDC streamer), ``executor`` (pool, transactions, statements),
``session`` (one WebSocket session), ``server`` (the process), ``metrics``,
``errormap``, ``decltypes``; ``cli`` and ``changes_cli`` are the
``dosql shard`` and ``dosql changes`` commands.
"""
