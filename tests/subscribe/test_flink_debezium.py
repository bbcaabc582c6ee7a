"""A real Debezium consumer: Flink SQL's ``debezium-json`` format reads the stream.

Needs a Python with apache-flink (and Java 17), which conflicts with this project's
pinned dependencies, so it runs in its own virtualenv, named by ``DOSQL_FLINK_PYTHON``;
without it the test is skipped. ``make test-flink`` sets it up and runs it (not part of
``make test``: installing Flink is ~0.5 GB).

The records' values (tombstones left out: a Kafka consumer gets them as null records,
which Flink's format skips) are written as JSON lines to a directory that a Flink
filesystem table with ``'format' = 'debezium-json'`` reads, with and without the
JsonConverter ``schema`` part; Flink's changelog, applied per key, must give exactly the
table's rows.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .test_debezium import frames

FLINK_PYTHON = os.environ.get("DOSQL_FLINK_PYTHON")
JOB = Path(__file__).with_name("flink_debezium_job.py")

pytestmark = pytest.mark.skipif(
    not FLINK_PYTHON, reason="DOSQL_FLINK_PYTHON (a Python with apache-flink) not set"
)


def flink_rows(path: Path, schema_include: bool) -> list[list]:
    out = subprocess.run(
        [str(FLINK_PYTHON), str(JOB), str(path), str(schema_include).lower()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]


@pytest.mark.parametrize("schemas", [False, True])
def test_flink_debezium_json_reads_the_stream(env, tmp_path, schemas):
    table = f"fl_items_{int(schemas)}"
    con = env.connect()
    cur = con.cursor()
    cur.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, qty REAL)")
    for i in range(1, 6):
        cur.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", (i, f"item{i}", i * 1.5))
    cur.execute(f"UPDATE {table} SET name = 'renamed', qty = 0.25 WHERE id = 2")
    cur.execute(f"UPDATE {table} SET qty = 9 WHERE id = 4")
    cur.execute(f"DELETE FROM {table} WHERE id = 3")
    want = {r[0]: [r[1], r[2]] for r in cur.execute(f"SELECT * FROM {table}").fetchall()}
    req = {
        "tables": [table],
        "start": "earliest",
        "format": "debezium",
        "changes_only": True,
        "tombstones": True,
        "schemas": schemas,
    }
    fs = frames(env.sub.url, req, lambda out: len(out) >= 9)  # 8 changes + 1 tombstone
    values = [f["value"] for f in fs if f["value"] is not None]
    assert len(values) == 8
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-0.json").write_text("".join(json.dumps(v) + "\n" for v in values))
    changelog = flink_rows(tmp_path / "in", schemas)
    kinds = [r[0] for r in changelog]
    assert kinds.count("+I") == 5 and kinds.count("-U") == kinds.count("+U") == 2
    assert kinds.count("-D") == 1
    got: dict[int, list] = {}
    for kind, key, name, qty in changelog:
        if kind in ("+I", "+U"):
            got[key] = [name, qty]
        else:
            assert got.pop(key) == [name, qty]  # Flink's -U/-D carry the exact before image
    assert got == want
