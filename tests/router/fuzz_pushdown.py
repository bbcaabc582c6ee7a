"""A seeded differential fuzzer aimed at the router's pushdown paths (issue 14).

It generates random single-table statements of the shapes the router pushes
down to shards and merges — scatter SELECTs with ORDER BY/LIMIT/OFFSET,
partial GROUP BY/HAVING (with aliases that shadow column names, GROUP BY
positions, grouping columns of every affinity and with NOCASE/RTRIM
collations), aggregates over mixed types, DISTINCT, ``x IN tablename``, text
that is not valid UTF-8 (``CAST(blob AS TEXT)``) and blobs — and runs each on
one plain ``sqlite3`` database and through the router of a real cluster
(4 shards, every table sharded on its first column), comparing the answers:

- no ORDER BY: as multisets (sqllogictest's rowsort);
- ORDER BY (every key is an output column): the sequence of sort keys must be
  SQLite's, and each run of equal keys must be rows SQLite orders at that key
  (a sub-multiset of all its rows with that key, taken from the same query
  without LIMIT/OFFSET), so ties at a LIMIT/OFFSET cut are judged correctly;
- an error on SQLite must be an error through the router; a router refusal
  (NotSupportedError) is counted, never a wrong answer.

Which text values count as equal for ties and for grouping representatives
depends on collations: where a statement involves a NOCASE/RTRIM column, text
is compared folded (lower case, trailing spaces dropped), as SQLite may return
either of two values that compare equal.

Used by ``tests/router/test_fuzz_pushdown.py`` (fixed budget in ``make test``)
and ``make fuzz`` (``DOSQL_FUZZ_EXAMPLES``, ``DOSQL_FUZZ_SEED``).
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TYPES = ["INTEGER", "TEXT", "REAL", "NUMERIC", "BLOB", ""]
COLLATIONS = ["", "", "", " COLLATE NOCASE", " COLLATE RTRIM"]
COLS = ["a", "b", "c"]
TEXTS = ["a", "A", "a ", "b", "B", "1", "2.5", " 3", "-1", "", "ab"]
BLOBS = [b"\x00", b"a", b"\xff\xfe", b"\x61\xff", b"ok", b"\xc3\xa9", b"1"]


@dataclass
class Schema:
    types: dict[str, str]  # column -> declared type (with COLLATE)
    t2_type: str

    @property
    def folded(self) -> bool:
        return any("COLLATE" in t for t in self.types.values()) or "COLLATE" in self.t2_type

    def ddl(self) -> list[str]:
        cols = ", ".join(f"{c} {self.types[c]}".strip() for c in COLS)
        return [
            "DROP TABLE IF EXISTS t1",
            "DROP TABLE IF EXISTS t2",
            f"CREATE TABLE t1 (k INTEGER, {cols}, bl BLOB)",
            f"CREATE TABLE t2 (x {self.t2_type})".replace("( ", "(").replace(" )", ")"),
        ]


@dataclass
class Query:
    sql: str
    order: tuple[int, ...] | None = None  # output positions of the sort keys (None: rowsort)
    base: str | None = None  # the same query without LIMIT/OFFSET (ties at the cut)
    params: tuple = ()  # for ``?`` in the query (the base query binds the leading ones)


@dataclass
class Stats:
    statements: int = 0
    compared: int = 0
    both_failed: int = 0
    representatives: int = 0  # equal only with 0 and 0.0 (etc.) taken as one value
    refused: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)


def value(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randint(-4, 6)
    if kind == 2:
        # no integral floats: 2 and 2.0 are one value to SQLite's GROUP BY/DISTINCT/MIN, and
        # which of them it returns depends on row order
        return rng.choice([1.5, -0.5, 2.5, 3.25])
    if kind == 3:
        return rng.randint(-2, 3)
    if kind == 4:
        return rng.choice(BLOBS)
    return rng.choice(TEXTS)


def schema(rng: random.Random) -> Schema:
    types = {c: rng.choice(TYPES) + rng.choice(COLLATIONS) for c in COLS}
    x = rng.choice(["INTEGER", "TEXT", "", "NUMERIC"]) + rng.choice(["", " COLLATE NOCASE"])
    return Schema(types, x + rng.choice(["", "", " COLLATE RTRIM"]) if "COLLATE" not in x else x)


def rows(rng: random.Random) -> tuple[list[tuple], list[tuple]]:
    n = rng.randint(8, 30)
    keys = rng.sample(range(-20, 60), n)
    t1 = [(k, value(rng), value(rng), value(rng), rng.choice(BLOBS)) for k in keys]
    t2 = [(rng.choice([value(rng), rng.randint(-4, 6)]),) for _ in range(rng.randint(0, 12))]
    t2 = [r for r in t2 if r[0] is not None]
    return t1, t2


# --------------------------------------------------------------------------- statements


def _where(rng: random.Random) -> str:
    c = rng.choice(COLS)
    lit = rng.choice(["1", "'a'", "'1'", "2.5", "'A'"])
    forms = [
        f"{c} > {rng.randint(-2, 3)}",
        f"{c} = {lit}",
        f"{c} IS NULL",
        f"{c} IS NOT NULL",
        f"{c} BETWEEN {rng.randint(-3, 0)} AND {rng.randint(1, 4)}",
        f"k = {rng.randint(-20, 60)}",
        f"k = '{rng.randint(-20, 60)}'",  # routes like the integer (INTEGER affinity)
        f"k = {rng.randint(-20, 60)}.0",
        f"k IN ({rng.randint(-20, 60)}, {rng.randint(-20, 60)})",
        f"typeof({c}) = '{rng.choice(['text', 'integer', 'real', 'blob'])}'",
        f"k > {rng.randint(-20, 40)}",
        f"{c} IN t2",
        f"{c} NOT IN t2",
    ]
    return " WHERE " + rng.choice(forms)


def _limit(rng: random.Random) -> str:
    n = rng.randint(0, 6)
    form = rng.randrange(5)
    if form == 0:
        return f" LIMIT {n}"
    if form == 1:
        return f" LIMIT {n} OFFSET {rng.randint(0, 12)}"
    if form == 2:
        return f" LIMIT {rng.randint(0, 10)}, {n}"  # LIMIT offset, count
    if form == 3:
        return f" LIMIT -1 OFFSET {rng.randint(1, 12)}"
    return ""


def _items(rng: random.Random) -> list[tuple[str, str | None]]:
    """(expression, alias) select items; aliases may shadow column names."""
    pool = [
        ("k", None),
        ("a", None),
        ("b", None),
        ("c", None),
        ("-a", "a"),  # shadows column a
        ("b", "c"),  # shadows column c
        ("a + 1", "b"),  # shadows column b
        ("CAST(bl AS TEXT)", "w"),  # maybe not UTF-8
        ("bl", None),
        ("length(b)", None),
        ("typeof(c)", "ty"),
        ("c || 'x'", None),
        ("a COLLATE NOCASE", "an"),
        ("upper(b)", "ub"),
    ]
    return rng.sample(pool, rng.randint(1, 4))


def _render(items: list[tuple[str, str | None]]) -> str:
    return ", ".join(f"{e} AS {a}" if a else e for e, a in items)


def _order_terms(rng: random.Random, items: list[tuple[str, str | None]]) -> tuple[str, list[int]]:
    """ORDER BY terms that each name an output column (position, alias, or its text)."""
    picks = rng.sample(range(len(items)), rng.randint(1, len(items)))
    terms = []
    for j in picks:
        e, a = items[j]
        form = rng.randrange(4)
        bare = e.split(" COLLATE ")[0]
        if form == 0 or (a is None and form == 1):
            t = str(j + 1)
        elif form == 1:
            t = a or str(j + 1)
        elif bare in COLS and all(x[1] != bare for x in items):
            t = e  # the column itself (no alias of that name, which ORDER BY would take)
        elif bare not in COLS:
            t = e  # the expression again: the router sorts by a hidden key column
        else:
            t = str(j + 1)
        t += rng.choice(["", " DESC", " ASC", " NULLS LAST", " DESC NULLS FIRST"])
        terms.append(t)
    return ", ".join(terms), picks


def plain_select(rng: random.Random) -> Query:
    items = _items(rng)
    where = _where(rng) if rng.random() < 0.6 else ""
    params: tuple = ()
    if not where and rng.random() < 0.2:  # parameters: bound per execution of a cached plan
        where, params = f" WHERE {rng.choice(COLS)} > ?", (rng.choice([0, 1, "a", 2.5]),)
    distinct = "DISTINCT " if rng.random() < 0.15 else ""
    head = f"SELECT {distinct}{_render(items)} FROM t1{where}"
    if rng.random() < 0.25:
        return Query(head, params=params)
    terms, picks = _order_terms(rng, items)
    base = f"{head} ORDER BY {terms}"
    if rng.random() < 0.2:
        limit = (rng.randint(0, 5), rng.choice([0, 2, 7, "3"]))
        return Query(base + " LIMIT ? OFFSET ?", tuple(picks), base, params + limit)
    return Query(base + _limit(rng), tuple(picks), base, params)


def aggregate_select(rng: random.Random) -> Query:
    aggs = [
        "count(*)",
        "count(a)",
        "sum(a)",
        "sum(b)",
        "total(c)",
        "min(a)",
        "max(b)",
        "min(c)",
        "max(CAST(bl AS TEXT))",
        "min(bl)",
        "avg(a)",
        "avg(b)",
        "max(a COLLATE NOCASE)",
    ]
    picked = rng.sample(aggs, rng.randint(1, 4))
    where = _where(rng) if rng.random() < 0.5 else ""
    return Query(f"SELECT {', '.join(picked)} FROM t1{where}")


def group_select(rng: random.Random) -> Query:
    forms = [  # (select items before the aggregates, GROUP BY text)
        (["a"], "a"),
        (["-a AS a"], "a"),  # GROUP BY names the column, not the alias
        (["-a AS z"], "z"),  # GROUP BY names the alias
        (["a + 0 AS a"], "a"),
        (["-b AS b"], "b"),
        (["a AS g"], "1"),
        (["CAST(b AS TEXT) AS w"], "w"),
        (["CAST(a AS INTEGER) AS i"], "i"),
        (["a", "b"], "a, b"),
        (["c"], "c"),
        (["typeof(b) AS ty"], "ty"),
        (["CAST(bl AS TEXT) AS w"], "w"),
        (["b"], "b"),
        (["b COLLATE NOCASE AS bn"], "bn"),
        (["c COLLATE RTRIM AS cr"], "cr"),  # not GROUP BY c COLLATE RTRIM: HAVING c = 'a' then
        # depends on which of 'a' and 'a ' SQLite keeps for the group
        (["a", "c"], "2, 1"),
        # k is unique (one row a group): HAVING/ORDER BY k + 0 name the column, not the alias
        (["-k AS k"], "-k"),
        (["k + 1 AS k", "a"], "1, a"),
    ]
    head, gb = rng.choice(forms)
    aggs = rng.sample(
        ["count(*)", "sum(c)", "min(b)", "max(a)", "avg(c)", "total(a)", "count(c)"],
        rng.randint(0, 3),
    )
    # aggregates under aliases, some of them a column's name (HAVING a: the column)
    aggs = [f"{x} AS {rng.choice(['n', 'a', 'b', 's'])}" if rng.random() < 0.3 else x for x in aggs]
    items = head + aggs
    where = _where(rng) if rng.random() < 0.4 else ""
    having = ""
    if rng.random() < 0.6:
        first = head[0].split(" AS ")
        name = first[-1] if len(first) == 2 else first[0]
        having = " HAVING " + rng.choice(
            [
                f"{name} = '3'",
                f"{name} = 3",
                f"{name} > 6",
                f"{name} <= -1",
                f"{name} < 'b'",
                "count(*) > 1",
                f"{name} IS NOT NULL AND count(*) >= 1",
                "min(c) > 0",  # not min(b) < 'b': under NOCASE, min of 'B', 'b' is either
                "max(b) < 2",
                f"{name} = 'a'",
                "n > 1",
                "s IS NULL OR n = 1",
            ]
        )
        aliases = {x.split(" AS ")[-1] for x in items if " AS " in x}
        if ("n " in having and "n" not in aliases) or (" s " in having and "s" not in aliases):
            having = " HAVING count(*) > 1"
    head_sql = f"SELECT {', '.join(items)} FROM t1{where} GROUP BY {gb}{having}"
    if rng.random() < 0.4:
        return Query(head_sql)
    n = len(items)
    picks = rng.sample(range(n), rng.randint(1, n))
    names = [h.split(" AS ")[-1] for h in items]  # ORDER BY a name: the alias first

    def term(j: int) -> str:
        by_name = j < len(head) and rng.random() < 0.5 and names.count(names[j]) == 1
        return (names[j] if by_name else str(j + 1)) + rng.choice(["", " DESC"])

    terms = ", ".join(term(j) for j in picks)
    if head[0].endswith(" AS k") and rng.random() < 0.5:
        terms = "k + 0" + rng.choice(["", " DESC"])  # the column k (one row a group)
        picks = [0]  # item 0 is a function of k alone: its sequence is the order
    base = f"{head_sql} ORDER BY {terms}"
    return Query(base + _limit(rng), tuple(picks), base)


def in_table(rng: random.Random) -> Query:
    c = rng.choice(COLS)
    return Query(
        rng.choice(
            [
                f"SELECT k FROM t1 WHERE {c} IN t2",
                f"SELECT count(*) FROM t1 WHERE {c} NOT IN t2",
                f"SELECT {rng.randint(-2, 4)} IN t2, 'a' NOT IN t2",
                f"SELECT k, {c} IN t2 FROM t1",
                "SELECT x, count(*) FROM t2 GROUP BY x HAVING x IN t2",
            ]
        )
    )


def key_select(rng: random.Random) -> Query:
    """Reads of t2 pinned (or not) by its sharding column x, whose type and collation vary."""
    lit = rng.choice(["'a'", "'A'", "1", "'1'", "1.0", "-2", "'b '", "2.5"])
    return Query(
        rng.choice(
            [
                f"SELECT x FROM t2 WHERE x = {lit}",
                f"SELECT count(*) FROM t2 WHERE x IN ({lit}, 'B')",
                f"SELECT x, count(*) FROM t2 WHERE x = {lit} OR x = 3 GROUP BY x",
                f"SELECT x FROM t2 WHERE x > {lit} ORDER BY 1 LIMIT 2",
            ]
        )
    )


def statement(rng: random.Random) -> Query:
    pick = rng.random()
    if pick < 0.4:
        return plain_select(rng)
    if pick < 0.55:
        return aggregate_select(rng)
    if pick < 0.85:
        return group_select(rng)
    if pick < 0.93:
        return in_table(rng)
    return key_select(rng)


# --------------------------------------------------------------------------- comparing


def _fold(v: Any, folded: bool) -> Any:
    if isinstance(v, float):
        return ("n", round(v, 9))
    if isinstance(v, int):
        return ("n", v)
    if isinstance(v, str):
        return ("t", v.lower().rstrip(" ") if folded else v)
    if isinstance(v, bytes | bytearray):
        return ("b", bytes(v))
    return ("z", 0)


def _row(r: tuple, folded: bool) -> tuple:
    return tuple(_fold(v, folded) for v in r)


def agree(q: Query, got: list[tuple], want: list[tuple], full: list[tuple], folded: bool) -> str:
    """'' when the router's rows are a correct answer, else why not."""
    if len(got) != len(want):
        return f"{len(got)} rows, SQLite {len(want)}"
    if any(len(g) != len(w) for g, w in zip(got, want, strict=True)):
        return "row width differs"
    if q.order is None:
        a = sorted(map(repr, (_row(r, folded) for r in got)))
        b = sorted(map(repr, (_row(r, folded) for r in want)))
        return "" if a == b else "different rows"
    keys = [tuple(_row(r, folded)[j] for j in q.order) for r in got]
    if keys != [tuple(_row(r, folded)[j] for j in q.order) for r in want]:
        return "different order"
    pool: dict[tuple, Counter[tuple]] = {}
    for r in full:
        fr = _row(r, folded)
        pool.setdefault(tuple(fr[j] for j in q.order), Counter())[fr] += 1
    runs: dict[tuple, Counter[tuple]] = {}
    for key, r in zip(keys, got, strict=True):
        runs.setdefault(key, Counter())[_row(r, folded)] += 1
    for key, run in runs.items():
        if run - pool.get(key, Counter()):
            return f"rows at sort key {key} are not SQLite's"
    return ""


def run_one(conn: Any, ref: sqlite3.Connection, q: Query, folded: bool, stats: Stats) -> None:
    """Run ``q`` on both sides and record the outcome in ``stats``."""
    from dosql.driver import exceptions as dx

    stats.statements += 1
    try:
        want = [tuple(r) for r in ref.execute(q.sql, q.params).fetchall()]
        ref_error: Exception | None = None
    except (sqlite3.Error, OverflowError) as exc:
        want, ref_error = [], exc
    cur = conn.cursor()
    try:
        cur.execute(q.sql, q.params or None)
        got = [tuple(r) for r in cur.fetchall()]
    except dx.NotSupportedError as exc:
        stats.refused[str(exc)[:90]] += 1
        return
    except dx.Error as exc:
        if ref_error is None and not (_undecodable(exc) and _undecodable_tie(ref, q, folded)):
            stats.mismatches.append(
                f"{q.sql} {q.params!r}\n    router error {exc!r}; SQLite answered {want!r}"
            )
        else:
            stats.both_failed += 1
        return
    if ref_error is not None and not _undecodable(ref_error):
        stats.mismatches.append(f"{q.sql}\n    router answered {got!r}; SQLite: {ref_error!r}")
        return
    if ref_error is not None:
        # SQLite stopped at a row whose text is not UTF-8; the router may rightly have
        # answered with other rows that tie with it under the ORDER BY
        want = _readable(ref, q.sql, q.params) if q.order is not None else []
        if q.order is None:
            stats.mismatches.append(f"{q.sql}\n    router answered {got!r}; SQLite: {ref_error!r}")
            return
    full = want
    if q.base is not None and q.base != q.sql:
        full = _readable(ref, q.base, q.params[: q.base.count("?")])
    why = agree(q, got, want, full, folded)
    if why and _picks_a_representative(q.sql):
        # 0 and 0.0 (or 3 and 3.0) are one value to GROUP BY, DISTINCT and MIN/MAX, and
        # which of them SQLite returns depends on row order: compare numbers by value
        loose = [_numeric(r) for r in got], [_numeric(r) for r in want]
        if not agree(q, *loose, [_numeric(r) for r in full], folded):
            why = ""
            stats.representatives += 1
    stats.compared += 1
    if why:
        stats.mismatches.append(
            f"{q.sql} {q.params!r}\n    {why}\n    router {got!r}\n    SQLite {want!r}"
        )


def _picks_a_representative(sql: str) -> bool:
    low = sql.lower()
    return any(w in low for w in ("group by", "distinct", "min(", "max("))


def _numeric(row: tuple) -> tuple:
    """Numbers as floats (0.0 for -0.0): for comparing equal values of either type."""
    return tuple(
        float(v) + 0.0 if isinstance(v, int | float) and not isinstance(v, bool) else v for v in row
    )


def _undecodable(exc: BaseException) -> bool:
    return "Could not decode to UTF-8" in str(exc)


def _readable(ref: sqlite3.Connection, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` with text that is not UTF-8 kept (as surrogate escapes)."""
    ref.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        return [tuple(r) for r in ref.execute(sql, params).fetchall()]
    finally:
        ref.text_factory = str


def _bad_text(row: tuple) -> bool:
    return any(isinstance(v, str) and any("\udc80" <= ch <= "\udcff" for ch in v) for v in row)


def _undecodable_tie(ref: sqlite3.Connection, q: Query, folded: bool) -> bool:
    """Whether rows tied with SQLite's answer (same sort keys) hold text that is not UTF-8."""
    if q.order is None or q.base is None:
        return False
    want = _readable(ref, q.sql, q.params)
    keys = {tuple(_row(r, folded)[j] for j in q.order) for r in want}
    return any(
        _bad_text(r)
        for r in _readable(ref, q.base, q.params[: q.base.count("?")])
        if tuple(_row(r, folded)[j] for j in q.order) in keys
    )


def setup(conn: Any, ref: sqlite3.Connection, sch: Schema, t1: list, t2: list) -> None:
    cur = conn.cursor()
    for sql in sch.ddl():
        cur.execute(sql)
        ref.execute(sql)
    ins1 = "INSERT INTO t1 VALUES (?, ?, ?, ?, ?)"
    ref.executemany(ins1, t1)
    cur.executemany(ins1, t1)
    if t2:
        ref.executemany("INSERT INTO t2 VALUES (?)", t2)
        cur.executemany("INSERT INTO t2 VALUES (?)", t2)


def fuzz(conn: Any, seed: int, budget: int, per_schema: int = 30) -> tuple[Stats, list[str]]:
    """Run about ``budget`` statements; returns the stats and each schema's DDL + rows log."""
    rng = random.Random(seed)
    stats = Stats()
    log: list[str] = []
    while stats.statements < budget:
        sch = schema(rng)
        t1, t2 = rows(rng)
        ref = sqlite3.connect(":memory:", isolation_level=None)
        try:
            setup(conn, ref, sch, t1, t2)
            log.append(f"{sch.ddl()[2:]} t1={t1!r} t2={t2!r}")
            before = len(stats.mismatches)
            for _ in range(min(per_schema, budget - stats.statements)):
                q = statement(rng)
                run_one(conn, ref, q, sch.folded or "COLLATE" in q.sql, stats)
            for i in range(before, len(stats.mismatches)):
                stats.mismatches[i] += f"\n    schema {sch.ddl()[2:]}\n    t1 {t1!r}\n    t2 {t2!r}"
        finally:
            ref.close()
    return stats, log
