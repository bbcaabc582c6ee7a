"""FOR SYSTEM_TIME AS OF through the router and the DB-API driver (issue 7).

Ground truth is a replay of the recorded workload on a plain SQLite database:
for a point between two steps, every step that committed before it and none
after; for a point exactly on a shard's commit timestamp (from the lake's
change log, which holds the shards' own stamps), that step included and the
microsecond before it, that step excluded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

import dosql
from dolake.catalog import open_catalog
from dosql import config as config_mod
from dosql.cluster import LocalCluster

from .conftest import Workload, fmt, now_us


def _catalog(cluster: LocalCluster) -> Any:
    cfg = config_mod.load(cluster.cluster_config)
    return open_catalog(cfg.lake, cluster.data_dir)


def _rows(conn: Any, sql: str, params: Any = None) -> list[tuple]:
    cur = conn.cursor()
    cur.execute(sql, params)
    return sorted(cur.fetchall())


def _as_of(conn: Any, micros: int) -> list[tuple]:
    return _rows(conn, f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(micros)}'")


def _changes_in(cluster: LocalCluster, table: str, low: int, high: int) -> list[dict]:
    """Change log rows of ``table`` committed within [low, high] (UTC µs)."""
    log = _catalog(cluster).load_table(("default", f"{table}__changelog"))
    start = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=low)
    end = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=high)
    flt = And(
        GreaterThanOrEqual("_commit_ts", start.isoformat()),
        LessThanOrEqual("_commit_ts", end.isoformat()),
    )
    data = log.scan(row_filter=flt, selected_fields=("_shard", "_lsn", "_commit_ts", "_op"))
    out = []
    for row in data.to_arrow().to_pylist():
        ts = row["_commit_ts"]
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        delta = ts - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        row["us"] = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        out.append(row)
    return out


def test_points_between_steps(conn: Any, workload: Workload, cluster: LocalCluster) -> None:
    steps = workload.steps
    gaps = [(steps[i].after + steps[i + 1].before) // 2 for i in range(len(steps) - 1)]
    # between lake snapshots, right after each snapshot, and a spread of others
    picks = sorted(
        set(gaps[::4] + [gaps[k - 1] for k in workload.synced_after] + [gaps[0], gaps[-1]])
    )
    for point in picks:
        expected = workload.replay(workload.upto_point(point))
        assert _as_of(conn, point) == expected, fmt(point)
    # after the last change: the current table
    after_last = now_us()
    assert _as_of(conn, after_last) == workload.replay(len(steps))
    assert _as_of(conn, after_last) == _rows(conn, "SELECT * FROM users")


def test_points_on_commit_timestamps(conn: Any, workload: Workload, cluster: LocalCluster) -> None:
    checked = 0
    for k, step in enumerate(workload.steps):
        if not step.single_row or k % 2:
            continue
        table = "settings" if "settings" in step.statements[0][0] else "users"
        changes = _changes_in(cluster, table, step.before, step.after)
        assert len({c["us"] for c in changes}) == 1, (k, changes)
        commit = changes[0]["us"]
        assert step.before <= commit <= step.after
        sql = f"SELECT * FROM {table} FOR SYSTEM_TIME AS OF TIMESTAMP ?"
        assert _rows(conn, sql, [fmt(commit)]) == workload.replay(k + 1, table)
        assert _rows(conn, sql, [fmt(commit - 1)]) == workload.replay(k, table)
        checked += 1
    assert checked >= 8


def test_first_change_and_before_history(conn: Any, workload: Workload) -> None:
    first = workload.steps[0]
    assert _as_of(conn, first.after) == workload.replay(1)
    with pytest.raises(dosql.ProgrammingError) as info:
        _as_of(conn, first.before - 1_000_000)
    assert info.value.code == "SNAPSHOT_NOT_FOUND"
    assert "available" in info.value.message


def test_timestamp_forms(conn: Any, workload: Workload) -> None:
    steps = workload.steps
    point = (steps[10].after + steps[11].before) // 2
    expected = workload.replay(11)
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert _rows(conn, f"SELECT * FROM users FOR SYSTEM_TIME AS OF '{fmt(point)}'") == expected
    assert _rows(
        conn, f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(point, tz)}'"
    ) == (expected)
    assert _rows(conn, f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(point)}Z'") == (
        expected
    )
    # a parameter, aliases, a WHERE with its own parameter after the clause's
    sql = "SELECT u.id, u.name FROM users AS u FOR SYSTEM_TIME AS OF TIMESTAMP ? WHERE u.id > ?"
    want = sorted((r[0], r[1]) for r in expected if r[0] > 3)
    assert _rows(conn, sql, [fmt(point), 3]) == want
    # a whole-day literal (midnight UTC) before the table existed
    with pytest.raises(dosql.ProgrammingError):
        _rows(conn, "SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-15'")


def test_spark_spellings_and_column_names(conn: Any, workload: Workload) -> None:
    """Spark/Iceberg's ``TIMESTAMP AS OF`` and ``VERSION AS OF`` mean what
    ``FOR SYSTEM_TIME AS OF TIMESTAMP`` / ``SNAPSHOT`` mean, and result columns
    are named as written (the statement run in memory is regenerated)."""
    steps = workload.steps
    point = (steps[10].after + steps[11].before) // 2
    expected = workload.replay(11)
    assert _rows(conn, f"SELECT * FROM users TIMESTAMP AS OF '{fmt(point)}'") == expected
    assert _rows(conn, "SELECT * FROM users AS u TIMESTAMP AS OF ?", [fmt(point)]) == expected
    cur = conn.cursor()
    cur.execute("SELECT snapshot_id FROM dosql_history('users') ORDER BY sequence_number")
    snapshot = cur.fetchall()[-1][0]
    by_version = _rows(conn, f"SELECT * FROM users VERSION AS OF {snapshot}")
    assert by_version == _rows(
        conn, f"SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT {snapshot}"
    )
    assert by_version
    cur.execute(
        "SELECT upper(name), id+1, count(*) AS n, users.id FROM users "
        f"FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(point)}' GROUP BY id"
    )
    assert [d[0] for d in cur.description] == ["upper(name)", "id+1", "n", "id"]
    assert sorted(cur.fetchall()) == sorted((r[1].upper(), r[0] + 1, 1, r[0]) for r in expected)


def test_join_with_own_past_and_two_points(conn: Any, workload: Workload) -> None:
    steps = workload.steps
    p1 = (steps[5].after + steps[6].before) // 2
    p2 = (steps[20].after + steps[21].before) // 2
    old = {r[0]: r for r in workload.replay(6)}
    mid = {r[0]: r for r in workload.replay(21)}
    now = {r[0]: r for r in workload.replay(len(steps))}
    # the reference guide's comparison query, verbatim apart from the point in time
    sql = f"""
SELECT
  current.id,
  current.name AS current_name,
  historical.name AS old_name
FROM users AS current
INNER JOIN (
  SELECT * FROM users
  FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(p1)}'
) AS historical ON current.id = historical.id
WHERE current.name != historical.name;
"""
    cur = conn.cursor()
    cur.execute(sql)
    assert [d[0] for d in cur.description] == ["id", "current_name", "old_name"]
    expected = sorted((i, now[i][1], old[i][1]) for i in now if i in old and now[i][1] != old[i][1])
    assert sorted(cur.fetchall()) == expected
    assert expected  # the workload renames rows, so the comparison finds some
    # the same table at two points, with a qualified column on each side
    sql = (
        "SELECT a.id, a.n, b.n FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ? AS a "
        "JOIN users AS b FOR SYSTEM_TIME AS OF TIMESTAMP ? ON a.id = b.id WHERE a.n <> b.n"
    )
    want = sorted((i, old[i][2], mid[i][2]) for i in old if i in mid and old[i][2] != mid[i][2])
    assert _rows(conn, sql, [fmt(p1), fmt(p2)]) == want
    # mixing with a current reference table and an aggregate
    sql = (
        "SELECT (SELECT count(*) FROM countries), count(*), sum(n) "
        "FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ?"
    )
    rows_then = list(old.values())
    assert _rows(conn, sql, [fmt(p1)]) == [(2, len(rows_then), sum(r[2] for r in rows_then))]


def test_snapshots_listed_and_read(conn: Any, workload: Workload, cluster: LocalCluster) -> None:
    cur = conn.cursor()
    cur.execute("SELECT * FROM dosql_history('users') ORDER BY sequence_number")
    cols = [d[0] for d in cur.description]
    listing = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    assert {"snapshot_id", "sequence_number", "committed_at", "watermarks", "row_count"} <= set(
        cols
    )
    assert len(listing) >= 3
    mirror = _catalog(cluster).load_table(("default", "users"))
    for snap in listing[:4]:
        want = sorted(
            (r["id"], r["name"], r["n"])
            for r in mirror.scan(snapshot_id=snap["snapshot_id"]).to_arrow().to_pylist()
        )
        assert snap["row_count"] == len(want)
        by_id = f"SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT {snap['snapshot_id']}"
        assert _rows(conn, by_id) == want
        by_seq = (
            f"SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT 'main@{snap['sequence_number']}'"
        )
        assert _rows(conn, by_seq) == want
        assert (
            _rows(
                conn, "SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT ?", [snap["snapshot_id"]]
            )
            == want
        )
    # the snapshots taken between phases hold exactly the steps before them
    synced = {tuple(r) for r in workload.replay(workload.synced_after[0])}
    assert any(
        set(_rows(conn, f"SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT {s['snapshot_id']}"))
        == synced
        for s in listing
    )
    with pytest.raises(dosql.ProgrammingError) as info:
        _rows(conn, "SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT 'main@4242'")
    assert info.value.code == "SNAPSHOT_NOT_FOUND"


def test_lsn_on_one_shard(conn: Any, workload: Workload, cluster: LocalCluster) -> None:
    checked = 0
    for k, step in enumerate(workload.steps):
        if not step.single_row or step.key is None or k % 3:
            continue
        changes = _changes_in(cluster, "users", step.before, step.after)
        assert len(changes) == 1
        lsn = changes[0]["_lsn"]
        sql = "SELECT * FROM users FOR SYSTEM_TIME AS OF LSN {} WHERE id = ?"
        after = [r for r in workload.replay(k + 1) if r[0] == step.key]
        before = [r for r in workload.replay(k) if r[0] == step.key]
        assert _rows(conn, sql.format(lsn), [step.key]) == after
        if lsn > 1:
            assert _rows(conn, sql.format(lsn - 1), [step.key]) == before
        checked += 1
    assert checked >= 4
    # an unsharded table lives on one shard: every statement on it is single-shard
    settings = [k for k, s in enumerate(workload.steps) if "settings" in s.statements[0][0]]
    last = workload.steps[settings[-1]]
    lsn = _changes_in(cluster, "settings", last.before, last.after)[0]["_lsn"]
    assert _rows(conn, f"SELECT * FROM settings FOR SYSTEM_TIME AS OF LSN {lsn}") == [("mode", "b")]
    assert _rows(conn, f"SELECT * FROM settings FOR SYSTEM_TIME AS OF LSN {lsn - 1}") == [
        ("mode", "a")
    ]


def test_reference_guide_syntax_examples(conn: Any, workload: Workload) -> None:
    """The guide's three syntax examples, verbatim: their literal points name
    moments this fresh cluster has no history for, so each gets its error."""
    cur = conn.cursor()
    with pytest.raises(dosql.ProgrammingError) as info:
        cur.execute("SELECT * FROM users\nFOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00';")
    assert info.value.code == "SNAPSHOT_NOT_FOUND" and "available" in info.value.message
    with pytest.raises(dosql.NotSupportedError) as info2:
        cur.execute("SELECT * FROM users\nFOR SYSTEM_TIME AS OF LSN 12345678;")
    assert "TIMESTAMP" in info2.value.message
    with pytest.raises(dosql.ProgrammingError) as info3:
        cur.execute("SELECT * FROM users\nFOR SYSTEM_TIME AS OF SNAPSHOT 'main@42';")
    assert info3.value.code == "SNAPSHOT_NOT_FOUND"


def test_errors(conn: Any, workload: Workload) -> None:
    cur = conn.cursor()
    future = now_us() + 3_600_000_000
    with pytest.raises(dosql.ProgrammingError) as info:
        cur.execute(f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(future)}'")
    assert info.value.code == "INVALID_INPUT" and "future" in info.value.message
    for bad in ("2026-13-01", "yesterday", "2026-01-01 25:00:00"):
        with pytest.raises(dosql.ProgrammingError) as info:
            cur.execute("SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ?", [bad])
        assert info.value.code == "INVALID_INPUT" and "malformed timestamp" in info.value.message
    with pytest.raises(dosql.NotSupportedError) as info2:
        cur.execute("SELECT count(*) FROM users FOR SYSTEM_TIME AS OF LSN 3")
    assert "TIMESTAMP" in info2.value.message
    point = fmt(workload.steps[3].after)
    with pytest.raises(dosql.NotSupportedError):
        cur.execute(f"DELETE FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{point}' WHERE id = 1")
    with pytest.raises(dosql.NotSupportedError):
        cur.execute(
            f"UPDATE users SET n = 0 WHERE id IN "
            f"(SELECT id FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{point}')"
        )
    with pytest.raises(dosql.ProgrammingError) as info:
        cur.execute(f"SELECT * FROM nosuch FOR SYSTEM_TIME AS OF TIMESTAMP '{point}'")
    assert info.value.code == "TABLE_NOT_FOUND"
    # the connection still works
    cur.execute("SELECT count(*) FROM users")
    assert cur.fetchone()[0] == len(workload.replay(len(workload.steps)))


def test_insert_select_from_history(conn: Any, workload: Workload) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE users_copy (id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER)")
    point = (workload.steps[12].after + workload.steps[13].before) // 2
    cur.execute(
        "INSERT INTO users_copy SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ?", [fmt(point)]
    )
    expected = workload.replay(13)
    assert cur.rowcount == len(expected)
    assert _rows(conn, "SELECT * FROM users_copy") == expected


def test_reference_table_history(conn: Any, cluster: LocalCluster, workload: Workload) -> None:
    """A reference table (a full copy on every shard) reads its past from one copy."""
    cur = conn.cursor()
    t0 = now_us()
    cur.execute("INSERT INTO countries VALUES ('de', 'Germany')")
    t1 = now_us()
    cur.execute("UPDATE countries SET name = 'République française' WHERE code = 'fr'")
    t2 = now_us()
    sql = "SELECT * FROM countries FOR SYSTEM_TIME AS OF TIMESTAMP ?"
    assert _rows(conn, sql, [fmt(t0)]) == [("fr", "France"), ("jp", "Japan")]
    assert _rows(conn, sql, [fmt(t1)]) == [("de", "Germany"), ("fr", "France"), ("jp", "Japan")]
    now = [("de", "Germany"), ("fr", "République française"), ("jp", "Japan")]
    assert _rows(conn, sql, [fmt(t2)]) == now
    # AS OF LSN: a reference-table read goes to one shard, the one feeding the lake's mirror
    lsn = cluster.shard_lsns()["shard-0"]
    assert _rows(conn, f"SELECT * FROM countries FOR SYSTEM_TIME AS OF LSN {lsn}") == now
    # joined with a sharded table's past and the current reference rows
    point = fmt(workload.steps[-1].after)
    sql = (
        "SELECT c.code, count(u.id) FROM countries AS c LEFT JOIN users "
        "FOR SYSTEM_TIME AS OF TIMESTAMP ? AS u ON u.n % 2 = length(c.code) % 2 "
        "GROUP BY c.code"
    )
    final = workload.replay(len(workload.steps))
    even = sum(1 for r in final if r[2] % 2 == 0)
    assert _rows(conn, sql, [point]) == [("de", even), ("fr", even), ("jp", even)]


def test_inside_a_transaction(cluster: LocalCluster, workload: Workload) -> None:
    """Current tables are read in the client's transaction (its own uncommitted
    rows included); history is the committed past."""
    c = dosql.connect(cluster.url, timeout=30, autocommit=False)
    try:
        cur = c.cursor()
        cur.execute("INSERT INTO users VALUES (7777, 'in tx', 0)")
        cur.execute(
            "SELECT cur.id FROM users AS cur WHERE cur.id NOT IN "
            "(SELECT id FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ?)",
            [fmt(now_us())],
        )
        assert cur.fetchall() == [(7777,)]
        c.rollback()
        cur.execute("SELECT count(*) FROM users WHERE id = 7777")
        assert cur.fetchone() == (0,)
        c.rollback()
    finally:
        c.close()
