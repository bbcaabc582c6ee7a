"""A Flink SQL job reading Debezium records with the ``debezium-json`` format (run by
test_flink_debezium.py with a Python that has apache-flink; not imported by the suite).

Usage: python flink_debezium_job.py DIR SCHEMA_INCLUDE  (DIR holds JSON lines: the
``value`` of each record). Prints one JSON line per changelog row Flink produced:
``[row_kind, id, name, qty]``.
"""

from __future__ import annotations

import json
import sys

from pyflink.table import EnvironmentSettings, TableEnvironment


def main(path: str, schema_include: bool) -> None:
    t = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    t.get_config().set("parallelism.default", "1")
    t.execute_sql(
        f"""CREATE TABLE items (id BIGINT, name STRING, qty DOUBLE) WITH (
            'connector' = 'filesystem', 'path' = '{path}', 'format' = 'debezium-json',
            'debezium-json.schema-include' = '{str(schema_include).lower()}',
            'debezium-json.ignore-parse-errors' = 'false')"""
    )
    with t.execute_sql("SELECT id, name, qty FROM items").collect() as rows:
        for r in rows:
            print(json.dumps([str(r.get_row_kind()), r[0], r[1], r[2]]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "true")
