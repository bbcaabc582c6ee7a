"""FOR SYSTEM_TIME AS OF parsing: every form, parameters, aliases, joins, errors,
and plain SQLite statements parsing exactly as with read="sqlite"."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest
import sqlglot
from sqlglot import exp

from dosql.errors import NotSupportedError, QueryError, ValidationError
from dosql.timetravel import (
    DIALECT,
    LsnPoint,
    SnapshotPoint,
    TimestampPoint,
    parse,
    parse_timestamp,
    remaining_params,
    strip,
    temporal_refs,
)


def micros(*args, tz=dt.UTC) -> int:
    d = dt.datetime(*args, tzinfo=tz) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


T1430 = micros(2026, 1, 20, 14, 30)


def refs(sql: str):
    return temporal_refs(parse(sql))


@pytest.mark.parametrize(
    "literal, expected",
    [
        ("2026-01-20 14:30:00", T1430),
        ("2026-01-20T14:30:00", T1430),
        ("2026-01-20 14:30", T1430),
        ("2026-01-20 14:30:00Z", T1430),
        ("2026-01-20 16:30:00+02:00", T1430),
        ("2026-01-20 09:30:00-05:00", T1430),
        ("2026-01-20 16:30:00+0200", T1430),
        ("2026-01-20 14:30:00.000001", T1430 + 1),
        ("2026-01-20 14:30:00.5", T1430 + 500_000),
        ("2026-01-15", micros(2026, 1, 15)),
    ],
)
def test_timestamp_forms(literal, expected):
    (ref,) = refs(f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{literal}'")
    assert ref.kind == "timestamp"
    assert ref.value == expected
    assert ref.point() == TimestampPoint(expected)


@pytest.mark.parametrize(
    "literal",
    [
        "yesterday",
        "2026-13-01",
        "2026-02-30",
        "2026-01-20 25:00:00",
        "2026-1-2",
        "",
        "20260120",
        "2026-01-20 14:30:00+25:00",
        "2026-01-20 14:30:00.1234567",
    ],
)
def test_malformed_timestamp_is_invalid_input(literal):
    with pytest.raises(ValidationError) as info:
        refs(f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{literal}'")
    assert info.value.code == "INVALID_INPUT"
    assert "YYYY-MM-DD" in info.value.message and "UTC" in info.value.message


def test_timestamp_from_datetime_and_parameter():
    assert parse_timestamp(dt.datetime(2026, 1, 20, 14, 30)) == T1430
    tz = dt.timezone(dt.timedelta(hours=2))
    assert parse_timestamp(dt.datetime(2026, 1, 20, 16, 30, tzinfo=tz)) == T1430
    (ref,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ? WHERE id = ?")
    assert ref.value is None and ref.param == 0
    assert ref.point(["2026-01-20 16:30:00+02:00", 5]) == TimestampPoint(T1430)
    with pytest.raises(ValidationError) as info:
        ref.point([12345, 5])
    assert info.value.code == "INVALID_INPUT"
    with pytest.raises(ValidationError) as info:
        ref.point([])
    assert info.value.code == "INVALID_PARAMETERS"


def test_positional_parameter_index_counts_every_question_mark_in_text_order():
    sql = (
        "SELECT ?, u.* FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ? AS u "
        "JOIN orders o ON o.uid = u.id AND o.x > ? "
        "JOIN users FOR SYSTEM_TIME AS OF SNAPSHOT ? AS v ON v.id = u.id WHERE u.id IN (?, ?)"
    )
    tree = parse(sql)
    r = temporal_refs(tree)
    assert [(x.table, x.alias, x.kind, x.param) for x in r] == [
        ("users", "u", "timestamp", 1),
        ("users", "v", "snapshot", 3),
    ]
    params = ["a", "2026-01-20 14:30:00", 7, "main@3", 1, 2]
    assert r[1].point(params) == SnapshotPoint(branch="main", sequence=3)
    assert remaining_params(params, r) == ["a", 7, 1, 2]
    stripped = strip(tree, {0: "h0", 1: "h1"})
    assert sum(1 for _ in stripped.find_all(exp.Placeholder)) == 4
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE h0(id, name)")
    con.execute("CREATE TABLE h1(id, name)")
    con.execute("CREATE TABLE orders(uid, x)")
    con.execute("INSERT INTO h0 VALUES (1, 'a')")
    con.execute("INSERT INTO h1 VALUES (1, 'b')")
    con.execute("INSERT INTO orders VALUES (1, 9)")
    rows = con.execute(stripped.sql(dialect="sqlite"), remaining_params(params, r)).fetchall()
    assert rows == [("a", 1, "a")]


def test_named_parameter():
    (ref,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP :ts WHERE id = :id")
    assert ref.param == "ts"
    assert ref.point({"ts": "2026-01-20 14:30:00", "id": 1}) == TimestampPoint(T1430)
    assert remaining_params({"ts": 1, "id": 2}, [ref]) == {"ts": 1, "id": 2}
    # the router's numbered form of `?`
    (ref,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP :__dosql_p0")
    assert ref.param == "__dosql_p0"


def test_snapshot_forms():
    (a,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT 1234567890")
    assert a.kind == "snapshot" and a.value == SnapshotPoint(snapshot_id=1234567890)
    (b,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT 'main@42'")
    assert b.value == SnapshotPoint(branch="main", sequence=42)
    (c,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT '987'")
    assert c.value == SnapshotPoint(snapshot_id=987)
    (d,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT ?")
    assert d.point([55]) == SnapshotPoint(snapshot_id=55)
    assert d.point(["audit@7"]) == SnapshotPoint(branch="audit", sequence=7)
    for bad in ("'main@'", "'@4'", "'main@x'", "'latest'"):
        with pytest.raises(ValidationError) as info:
            refs(f"SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT {bad}")
        assert info.value.code == "INVALID_INPUT" and "branch@sequence" in info.value.message


def test_lsn_form():
    (ref,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF LSN 12345678 WHERE id = 3")
    assert ref.kind == "lsn" and ref.value == 12345678
    assert ref.point(shard="shard-1") == LsnPoint(12345678, "shard-1")
    (p,) = refs("SELECT * FROM users FOR SYSTEM_TIME AS OF LSN ?")
    assert p.point([9], shard="shard-0") == LsnPoint(9, "shard-0")
    with pytest.raises(ValidationError):
        p.point([-1])
    with pytest.raises(QueryError) as info:
        parse("SELECT * FROM users FOR SYSTEM_TIME AS OF LSN 'abc'")
    assert info.value.code == "SYNTAX_ERROR"


def test_spark_spellings():
    (v,) = refs("SELECT * FROM users VERSION AS OF 1234567890")
    assert v.kind == "snapshot" and v.value == SnapshotPoint(snapshot_id=1234567890)
    (t,) = refs("SELECT * FROM users AS u TIMESTAMP AS OF '2026-01-20 14:30:00' WHERE u.id = 1")
    assert t.kind == "timestamp" and t.value == T1430 and t.alias == "u"
    (p,) = refs("SELECT * FROM users u VERSION AS OF ?")
    assert p.point([7]) == SnapshotPoint(snapshot_id=7) and p.alias == "u"
    # the words stay plain identifiers elsewhere
    for sql in (
        "SELECT version, timestamp FROM t AS version WHERE timestamp > 1",
        "SELECT * FROM timestamp",
    ):
        assert refs(sql) == []
        assert parse(sql) == sqlglot.parse_one(sql, read="sqlite")


def test_column_names_kept_as_written():
    from dosql.timetravel import keep_column_names

    sql = (
        "SELECT DISTINCT upper(name), id, count(*) AS c, a+1, 'x,y', t.b FROM t "
        "FOR SYSTEM_TIME AS OF LSN 3 GROUP BY 1 UNION SELECT 1, 2, 3, 4, 5, 6"
    )
    tree = parse(sql)
    keep_column_names(tree, sql)
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (id, name, a, b)")
    cur = con.execute(strip(tree, {0: "t"}).sql(dialect=DIALECT))
    assert [d[0] for d in cur.description] == ["upper(name)", "id", "c", "a+1", "'x,y'", "b"]


def test_aliases_before_and_after_and_qualified_names():
    for sql in (
        "SELECT u.id FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00' AS u",
        "SELECT u.id FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00' u",
        "SELECT u.id FROM users AS u FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00'",
        "SELECT u.id FROM users u FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00'",
        "SELECT u.id FROM main.users AS u FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00'",
    ):
        (ref,) = refs(sql)
        assert (ref.table, ref.alias, ref.value) == ("users", "u", T1430), sql
        assert (
            strip(parse(sql), {0: "hist"}).sql(dialect="sqlite") == 'SELECT u.id FROM "hist" AS u'
        )
    (q,) = refs("SELECT * FROM main.users FOR SYSTEM_TIME AS OF LSN 3")
    assert q.db == "main"


def test_reference_guide_example_joins_table_with_its_own_past():
    sql = """
    SELECT
      current.id,
      current.name AS current_name,
      historical.name AS old_name
    FROM users AS current
    INNER JOIN (
      SELECT * FROM users
      FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-15'
    ) AS historical ON current.id = historical.id
    WHERE current.name != historical.name;
    """
    tree = parse(sql)
    (ref,) = temporal_refs(tree)
    assert (ref.table, ref.alias, ref.value) == ("users", None, micros(2026, 1, 15))
    stripped = strip(tree, {ref: "users_hist"})
    assert not any(t.args.get("version") for t in stripped.find_all(exp.Table))
    assert tree.find(exp.Version) is not None  # strip copies
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("CREATE TABLE users_hist(id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO users VALUES (?, ?)", [(1, "ann"), (2, "bobby"), (3, "cy")])
    con.executemany("INSERT INTO users_hist VALUES (?, ?)", [(1, "ann"), (2, "bob")])
    assert con.execute(stripped.sql(dialect="sqlite")).fetchall() == [(2, "bobby", "bob")]


def test_same_table_at_two_points_and_unqualified_columns():
    sql = (
        "SELECT a.id, a.v, b.v FROM t FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-01' AS a "
        "LEFT JOIN t FOR SYSTEM_TIME AS OF LSN 7 AS b USING (id) "
        "WHERE a.id IN (SELECT id FROM t FOR SYSTEM_TIME AS OF SNAPSHOT 'main@2') ORDER BY 1"
    )
    tree = parse(sql)
    r = temporal_refs(tree)
    assert [(x.index, x.kind, x.alias) for x in r] == [
        (0, "timestamp", "a"),
        (1, "lsn", "b"),
        (2, "snapshot", None),
    ]
    out = strip(tree, {0: "p0", 1: "p1", 2: "p2"}).sql(dialect="sqlite")
    assert '"p0" AS a' in out and '"p1" AS b' in out and '"p2" AS "t"' in out
    with pytest.raises(KeyError):
        strip(tree, {0: "p0"})
    # generating the DoSQLite dialect gives the clause back, and it re-parses to the same refs
    again = parse(tree.sql(dialect=DIALECT))
    assert temporal_refs(again) == r


def test_statements_with_history_that_are_refused():
    with pytest.raises(QueryError) as info:
        parse("SELECT * FROM (SELECT 1) AS s FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-01'")
    assert info.value.code == "SYNTAX_ERROR" and "table name" in info.value.message
    with pytest.raises(QueryError) as info:
        parse("SELECT * FROM users FOR SYSTEM_TIME BETWEEN 1 AND 2")
    assert info.value.code == "SYNTAX_ERROR" and "AS OF" in info.value.message
    with pytest.raises(QueryError):
        parse("SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP 5")
    with pytest.raises(NotSupportedError):
        refs("DELETE FROM users FOR SYSTEM_TIME AS OF LSN 5 WHERE id = 1")
    # restoring old rows into another table is fine
    (ref,) = refs(
        "INSERT INTO users_recovered SELECT * FROM users "
        "FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00'"
    )
    assert ref.table == "users"


PLAIN = [
    "SELECT 1",
    "SELECT * FROM t",
    "SELECT a, b AS c FROM t AS x WHERE x.a > 1 AND b LIKE 'a%' ORDER BY a DESC LIMIT 10 OFFSET 5",
    "SELECT COUNT(*), SUM(v), AVG(v), MIN(v), MAX(v) FROM t GROUP BY k HAVING COUNT(*) > 1",
    "SELECT * FROM a JOIN b ON a.id = b.id LEFT JOIN c USING (id) CROSS JOIN d",
    "SELECT * FROM a, b WHERE a.x = b.y",
    "SELECT * FROM (SELECT id FROM t) AS s WHERE s.id IN (SELECT id FROM u)",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    "SELECT a FROM t UNION SELECT b FROM u EXCEPT SELECT c FROM v",
    "SELECT CASE WHEN a IS NULL THEN 'x' ELSE a END, COALESCE(a, b), IFNULL(a, 0) FROM t",
    "SELECT a || b, substr(a, 1, 2), length(a), upper(b), typeof(a) FROM t",
    "SELECT * FROM t WHERE a BETWEEN 1 AND 5 AND b NOT IN (1, 2) AND c IS NOT NULL",
    "SELECT * FROM t WHERE a = ? AND b = :name AND c = ?",
    "SELECT row_number() OVER (PARTITION BY k ORDER BY v) FROM t",
    "SELECT json_extract(doc, '$.a') FROM t",
    "SELECT CAST(a AS INTEGER), CAST(b AS TEXT) FROM t",
    "SELECT DISTINCT a FROM t ORDER BY a COLLATE NOCASE",
    "SELECT x'00ff', 1.5e3, -2, 'it''s' FROM t",
    "SELECT * FROM t INDEXED BY idx WHERE a = 1",
    "SELECT * FROM t NOT INDEXED",
    "SELECT strftime('%Y', ts), date('now'), datetime(ts, '+1 day') FROM t",
    "SELECT * FROM t AS for_x",
    "SELECT * FROM t AS system_time",
    "SELECT * FROM t AS ts WHERE ts.a = 1",
    "SELECT a FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = t.a)",
    "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')",
    "INSERT OR REPLACE INTO t VALUES (?, ?)",
    "INSERT INTO t SELECT * FROM u",
    "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b",
    "UPDATE t SET a = a + 1, b = 'z' WHERE id = 3",
    "DELETE FROM t WHERE a < 0",
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, v REAL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS t2 AS SELECT * FROM t",
    "CREATE INDEX idx ON t (a, b)",
    "DROP TABLE IF EXISTS t",
    "ALTER TABLE t ADD COLUMN c TEXT",
    "SELECT * FROM t LIMIT 3",
    'SELECT a AS "weird name", [b], `c` FROM "t"',
    "SELECT * FROM t WHERE a GLOB 'x*' OR a REGEXP 'y'",
    "SELECT group_concat(a, ','), total(b) FROM t",
]


@pytest.mark.parametrize("sql", PLAIN)
def test_plain_sqlite_parses_exactly_as_sqlite(sql):
    ours = parse(sql)
    theirs = sqlglot.parse_one(sql, read="sqlite")
    assert ours == theirs
    assert ours.sql(dialect="sqlite") == theirs.sql(dialect="sqlite")
    assert ours.sql(dialect=DIALECT) == theirs.sql(dialect="sqlite")
    assert temporal_refs(ours) == []
    assert strip(ours, {}) == ours


def test_parse_errors_are_typed():
    with pytest.raises(QueryError) as info:
        parse("SELEC * FROM t")
    assert info.value.code == "SYNTAX_ERROR"
    with pytest.raises(QueryError) as info:
        parse("SELECT 1; SELECT 2")
    assert info.value.code == "QUERY_ERROR"


def test_dosql_history_table_function():
    from dosql.timetravel import history_refs

    tree = parse(
        "SELECT h.snapshot_id FROM dosql_history('users') AS h "
        "JOIN users FOR SYSTEM_TIME AS OF TIMESTAMP ? AS u ON 1 "
        "WHERE h.row_count > ? AND h.snapshot_id IN (SELECT snapshot_id FROM dosql_history(?))"
    )
    hist = history_refs(tree)
    assert [(h.index, h.table, h.alias, h.param) for h in hist] == [
        (0, "users", "h", None),
        (1, None, None, 2),
    ]
    assert hist[1].table_name(["2026-01-01", 0, "orders"]) == "orders"
    (ref,) = temporal_refs(tree)
    assert ref.param == 0
    out = strip(tree, {0: "hist_u"}, history={0: "listing0", 1: "listing1"}).sql(dialect="sqlite")
    assert '"listing0" AS h' in out and '"listing1" AS "dosql_history"' in out
    assert "dosql_history(" not in out and '"hist_u" AS u' in out
    assert remaining_params(["2026-01-01", 0, "orders"], [ref, *hist]) == [0]
    with pytest.raises(ValidationError):
        history_refs(parse("SELECT * FROM dosql_history()"))
    with pytest.raises(ValidationError):
        hist[1].table_name([None, None, 5])
    # a bare name works too
    assert history_refs(parse("SELECT * FROM dosql_history(users)"))[0].table == "users"
