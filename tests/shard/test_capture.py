"""Change capture semantics: schema events, cascades, user triggers, upserts, odd names."""

from __future__ import annotations

from tests.shard.client import ShardClient
from tests.shard.replay import assert_replica_matches


def schema_events(client: ShardClient) -> list[tuple[str, str, str | None]]:
    return [
        (c.table, c.schema.action, c.schema.renamed_from)
        for c in client.all_changes()
        if c.op == "schema"
    ]


def test_schema_events_and_capture_across_alter(client: ShardClient) -> None:
    c = client
    c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
    c.execute("INSERT INTO items VALUES (1, 'a', 10)")
    c.execute("ALTER TABLE items ADD COLUMN price REAL DEFAULT 1.5")
    c.execute("INSERT INTO items VALUES (2, 'b', 20, 2.5)")
    c.execute("ALTER TABLE items RENAME COLUMN name TO title")
    c.execute("UPDATE items SET title = 'bb' WHERE id = 2")
    c.execute("ALTER TABLE items DROP COLUMN qty")
    c.execute("INSERT INTO items VALUES (3, 'c', 3.5)")
    c.execute("CREATE INDEX items_title ON items(title)")
    c.execute("ALTER TABLE items RENAME TO goods")
    c.execute("UPDATE goods SET price = 9 WHERE id = 1")
    c.execute("DROP INDEX items_title")
    c.execute("CREATE TABLE gone(x)")
    c.execute("DROP TABLE gone")
    assert schema_events(c) == [
        ("items", "create", None),
        ("items", "alter", None),
        ("items", "alter", None),
        ("items", "alter", None),
        ("items", "index", None),
        ("goods", "alter", "items"),
        ("goods", "index", None),
        ("gone", "create", None),
        ("gone", "drop", None),
    ]
    changes = c.all_changes()
    ev = [ch for ch in changes if ch.op == "schema"]
    assert [col.name for col in ev[0].schema.columns] == ["id", "name", "qty"]
    assert ev[0].schema.primary_key == ["id"] and ev[0].schema.sql.startswith("CREATE TABLE")
    assert [col.name for col in ev[3].schema.columns] == ["id", "title", "price"]
    assert ev[4].schema.indexes == ["CREATE INDEX items_title ON items(title)"]
    rows = [(ch.table, ch.op, ch.after) for ch in changes if ch.op != "schema"]
    assert rows == [
        ("items", "insert", {"id": 1, "name": "a", "qty": 10}),
        ("items", "insert", {"id": 2, "name": "b", "qty": 20, "price": 2.5}),
        ("items", "update", {"id": 2, "title": "bb", "qty": 20, "price": 2.5}),
        ("items", "insert", {"id": 3, "title": "c", "price": 3.5}),
        ("goods", "update", {"id": 1, "title": "a", "price": 9.0}),
    ]
    assert_replica_matches(c, changes)


def test_cascades_user_triggers_upsert_replace(client: ShardClient) -> None:
    c = client
    c.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
    c.execute(
        "CREATE TABLE child(id INTEGER PRIMARY KEY, "
        "pid INTEGER REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE, v)"
    )
    c.execute("CREATE TABLE audit(n INTEGER, what TEXT)")  # no primary key: rowid is the key
    c.execute(
        "CREATE TRIGGER audit_child AFTER INSERT ON child BEGIN "
        "INSERT INTO audit VALUES (NEW.id, 'child added'); END"
    )
    c.execute("INSERT INTO parent VALUES (1, 'p1'), (2, 'p2')")
    c.execute("INSERT INTO child VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 2, 'c')")
    c.execute("UPDATE parent SET id = 5 WHERE id = 2")  # key change + ON UPDATE CASCADE
    c.execute("DELETE FROM parent WHERE id = 1")  # ON DELETE CASCADE
    c.execute("INSERT INTO parent VALUES (7, 'p7') ON CONFLICT(id) DO UPDATE SET name = 'x'")
    c.execute(
        "INSERT INTO parent VALUES (7, 'p7b') ON CONFLICT(id) DO UPDATE SET name = excluded.name"
    )
    c.execute("REPLACE INTO parent VALUES (8, 'p7b')")  # deletes row 7 (unique name), inserts 8
    c.execute("INSERT OR REPLACE INTO audit(rowid, n, what) VALUES (1, -1, 'replaced')")
    changes = [ch for ch in c.all_changes() if ch.op != "schema"]
    by = [(ch.table, ch.op, ch.key) for ch in changes]
    assert by == [
        ("parent", "insert", [1]),
        ("parent", "insert", [2]),
        ("audit", "insert", [1]),  # the user trigger was created later: it fires first
        ("child", "insert", [10]),
        ("audit", "insert", [2]),
        ("child", "insert", [11]),
        ("audit", "insert", [3]),
        ("child", "insert", [12]),
        ("child", "update", [12]),  # FK actions run before the parent's AFTER triggers
        ("parent", "delete", [2]),
        ("parent", "insert", [5]),
        ("child", "delete", [10]),
        ("child", "delete", [11]),
        ("parent", "delete", [1]),
        ("parent", "insert", [7]),
        ("parent", "update", [7]),
        ("parent", "delete", [7]),
        ("parent", "insert", [8]),
        ("audit", "delete", [1]),
        ("audit", "insert", [1]),
    ]
    assert changes[8].after == {"id": 12, "pid": 5, "v": "c"}
    assert changes[15].before["name"] == "p7" and changes[15].after["name"] == "p7b"
    txids = [ch.txid for ch in changes]
    assert txids[2] == txids[3]  # user trigger's change shares the statement's transaction
    assert txids[8] == txids[9] == txids[10]  # cascade in the same transaction
    assert all(
        a.lsn + 1 == b.lsn for a, b in zip(changes, changes[1:], strict=False) if a.txid == b.txid
    )
    assert all(a.commit_ts <= b.commit_ts for a, b in zip(changes, changes[1:], strict=False))
    assert_replica_matches(c, c.all_changes())


def test_odd_identifiers_and_without_rowid(client: ShardClient) -> None:
    c = client
    c.execute(
        'CREATE TABLE "select"("we""ird col" TEXT NOT NULL, "order" INTEGER NOT NULL, '
        '"a b" BLOB, PRIMARY KEY("order", "we""ird col")) WITHOUT ROWID'
    )
    c.execute('CREATE TABLE "naïve table ☃"(v)')
    c.execute("INSERT INTO \"select\" VALUES ('k', 1, x'00ff'), ('k', 2, NULL)")
    c.execute('UPDATE "select" SET "order" = 3 WHERE "order" = 2')
    c.execute('INSERT INTO "naïve table ☃"(v) VALUES (?), (?), (?)', ["é", 2**63 - 1, -(2**63)])
    c.execute('UPDATE "naïve table ☃" SET rowid = 100 WHERE rowid = 2')
    c.execute('DELETE FROM "naïve table ☃" WHERE rowid = 1')
    c.execute('ALTER TABLE "select" ADD COLUMN "from" DEFAULT 0.1')
    c.execute("INSERT INTO \"select\" VALUES ('z', 9, NULL, 3e-300)")
    changes = c.all_changes()
    ops = [(ch.table, ch.op, ch.key) for ch in changes if ch.op != "schema"]
    assert ops == [
        ("select", "insert", [1, "k"]),
        ("select", "insert", [2, "k"]),
        ("select", "delete", [2, "k"]),
        ("select", "insert", [3, "k"]),
        ("naïve table ☃", "insert", [1]),
        ("naïve table ☃", "insert", [2]),
        ("naïve table ☃", "insert", [3]),
        ("naïve table ☃", "delete", [2]),
        ("naïve table ☃", "insert", [100]),
        ("naïve table ☃", "delete", [1]),
        ("select", "insert", [9, "z"]),
    ]
    create = next(ch for ch in changes if ch.op == "schema")
    assert create.schema.without_rowid and create.schema.primary_key == ["order", 'we"ird col']
    assert changes[-1].after["from"] == 3e-300
    assert_replica_matches(c, changes)


def test_create_table_as_select_and_adopted_tables_are_logged(
    tmp_path, client: ShardClient
) -> None:
    c = client
    c.execute("CREATE TABLE src(id INTEGER PRIMARY KEY, v)")
    c.executemany("INSERT INTO src VALUES (?, ?)", [[1, "a"], [2, b"b"], [3, 3.25]])
    c.execute("CREATE TABLE copy AS SELECT v, id * 2 AS twice FROM src")
    changes = c.all_changes()
    copy = [(ch.op, ch.key, ch.after) for ch in changes if ch.table == "copy"]
    assert copy[0][0] == "schema"
    assert copy[1:] == [
        ("insert", [1], {"v": "a", "twice": 2}),
        ("insert", [2], {"v": b"b", "twice": 4}),
        ("insert", [3], {"v": 3.25, "twice": 6}),
    ]
    assert len({ch.txid for ch in changes if ch.table == "copy"}) == 1
    assert_replica_matches(c, changes)
