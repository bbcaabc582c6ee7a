"""sqllogictest select1-5: the runner against SQLite (oracle), then through the router.

The SQLite run proves the parser and the result formatting: the expected
results were produced by SQLite, so anything short of 100% there is a runner
bug. The router run is issue 5's conformance target: every query correct or
refused with a reason, no wrong answer, at least 99% correct.
"""

from __future__ import annotations

import os

import pytest

from tests.conformance import engines, runner, slt

FILES = runner.default_files()
HAVE_FILES = all(p.is_file() for p in FILES)
needs_files = pytest.mark.skipif(
    not HAVE_FILES, reason=f"sqllogictest files not found in {runner.slt_dir()} (DOSQL_SLT_DIR)"
)


# --------------------------------------------------------------------------- format


def test_integers_print_as_c_int_of_sqlite_int64() -> None:
    assert slt.format_value(42, "I") == "42"
    assert slt.format_value(-7, "I") == "-7"
    assert slt.format_value(2**32 + 5, "I") == "5"  # sqlite3_column_int keeps 32 bits
    assert slt.format_value(3.99, "I") == "3"
    assert slt.format_value(-3.99, "I") == "-3"
    assert slt.format_value(1e300, "I") == "-1"  # saturates to INT64_MAX, low 32 bits
    assert slt.format_value("12abc", "I") == "12"
    assert slt.format_value("abc", "I") == "0"
    assert slt.format_value(None, "I") == "NULL"


def test_reals_print_with_sqlite_rounding() -> None:
    assert slt.format_value(1, "R") == "1.000"
    assert slt.format_value(2.5, "R") == "2.500"
    # An exact binary tie: Python's "%.3f" rounds to even (0.062), SQLite up.
    assert slt.format_value(0.0625, "R") == "0.063"
    assert slt.format_value("1.5xyz", "R") == "1.500"
    assert slt.format_value(None, "R") == "NULL"


def test_text_prints_empty_and_control_characters_like_the_harness() -> None:
    assert slt.format_value("", "T") == "(empty)"
    assert slt.format_value("a\tb\n", "T") == "a@b@"
    assert slt.format_value("é", "T") == "@@"  # each UTF-8 byte outside ' '..'~'
    assert slt.format_value(7, "T") == "7"
    assert slt.format_value(100.0, "T") == "100.0"  # SQLite's text for a real
    assert slt.format_value(0.1, "T") == "0.1"
    assert slt.format_value(None, "T") == "NULL"


def test_sort_modes_and_hash() -> None:
    rows = [["10", "b"], ["9", "a"], ["10", "a"]]
    assert slt.sorted_values(rows, "nosort") == ["10", "b", "9", "a", "10", "a"]
    assert slt.sorted_values(rows, "rowsort") == ["10", "a", "10", "b", "9", "a"]  # strcmp
    assert slt.sorted_values(rows, "valuesort") == ["10", "10", "9", "a", "a", "b"]
    assert slt.md5_of(["1", "2"]) == "6ddb4095eb719e2a9f0a3f95677d24e0"  # md5(b"1\n2\n")


# --------------------------------------------------------------------------- parse


SAMPLE = """\
hash-threshold 8

statement ok
CREATE TABLE t1(a INTEGER, b TEXT)

statement ok
INSERT INTO t1 VALUES(1, 'x'), (2, '')

skipif sqlite
query I nosort
SELECT this is not sql
----
1

onlyif mysql
statement ok
THIS IS NOT SQL EITHER

# a comment
query IT rowsort label-1
SELECT a, b
  FROM t1
----
1
x
2
(empty)

query I valuesort
SELECT a FROM t1
----
2 values hashing to 6ddb4095eb719e2a9f0a3f95677d24e0

statement error
SELECT * FROM no_such_table

query I nosort
SELECT a FROM t1 WHERE a > 5
----

halt

query I nosort
SELECT 'never reached'
----
1
"""


def test_parser_reads_every_record_kind() -> None:
    records = slt.parse_text(SAMPLE, "sample.test")
    kinds = [type(r).__name__ for r in records]
    assert kinds == [
        "HashThreshold", "Statement", "Statement", "Query", "Statement", "Query", "Query",
        "Statement", "Query", "Halt", "Query",
    ]  # fmt: skip
    q = records[5]
    assert isinstance(q, slt.Query)
    assert (q.types, q.sort, q.label, q.line) == ("IT", "rowsort", "label-1", 20)
    assert q.sql == "SELECT a, b\n  FROM t1"
    assert q.expected == ("1", "x", "2", "(empty)")
    hashed = records[6]
    assert isinstance(hashed, slt.Query)
    assert hashed.expected_hash == (2, "6ddb4095eb719e2a9f0a3f95677d24e0")
    runnable = list(slt.iter_runnable(records))
    assert len(runnable) == 7  # guards drop two, halt stops before the last


def test_runner_scores_the_sample_on_sqlite() -> None:
    records = [r for r in slt.iter_runnable(slt.parse_text(SAMPLE, "s.test"))]
    engine = engines.SqliteEngine()
    outcomes = [
        runner.run_record(engine, r) for r in records if not isinstance(r, slt.HashThreshold)
    ]
    assert [o.status for o in outcomes] == ["correct"] * 6


class _Perturbed(engines.SqliteEngine):
    """SQLite with one kind of fault injected, to prove the runner notices."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def execute(self, sql: str):  # type: ignore[override]
        rows = super().execute(sql)
        if not sql.lstrip().upper().startswith("SELECT"):
            return rows
        if self.fault == "drop-row":
            return (rows or [])[1:]
        if self.fault == "refuse":
            raise runner.Refused("joins are not supported yet")
        if self.fault == "boom":
            raise RuntimeError("shard went away")
        return rows


@pytest.mark.parametrize(
    ("fault", "status"), [("drop-row", "wrong"), ("refuse", "refused"), ("boom", "error")]
)
def test_runner_classifies_faults(fault: str, status: str) -> None:
    records = slt.parse_text(SAMPLE, "s.test")
    query = next(r for r in records if isinstance(r, slt.Query) and r.label == "label-1")
    engine = _Perturbed(fault)
    engine.execute("CREATE TABLE t1(a INTEGER, b TEXT)")
    engine.execute("INSERT INTO t1 VALUES(1, 'x'), (2, '')")
    outcome = runner.run_record(engine, query)
    assert outcome.status == status
    if status == "refused":
        assert "joins are not supported" in outcome.reason


def test_a_hashed_result_with_one_value_off_is_wrong() -> None:
    records = slt.parse_text(SAMPLE, "s.test")
    hashed = next(r for r in records if isinstance(r, slt.Query) and r.expected_hash)
    assert slt.compare(hashed, [(1,), (2,)]).ok
    assert not slt.compare(hashed, [(1,), (3,)]).ok
    assert not slt.compare(hashed, [(1,)]).ok
    assert not slt.compare(hashed, [(1, 1), (2, 2)]).ok  # column count differs


# --------------------------------------------------------------------------- whole files


def _print_report(results: list[runner.FileResult], engine: str, capsys) -> None:
    with capsys.disabled():
        print("\n" + runner.report(results, engine=engine, show=5))


@needs_files
def test_sqlite_engine_scores_100_percent_on_select1_to_5(capsys) -> None:
    engine = engines.SqliteEngine()
    results = runner.run_files(engine, FILES)
    totals = runner.total_counts(results)
    _print_report(results, "sqlite", capsys)
    assert totals["total"] > 10_000
    assert runner.total_counts(results, "query")["total"] > 8_800
    assert totals["correct"] == totals["total"], runner.report(results, engine="sqlite")


ROUTER_OK, ROUTER_WHY = engines.router_available()
# make test scores every 3rd query of select1-5 through the router (all statements run);
# make conformance scores them all (DOSQL_SLT_EVERY=1; about 2.5 minutes on 2 cores)
ROUTER_EVERY = max(1, int(os.environ.get("DOSQL_SLT_EVERY", "3")))


@needs_files
@pytest.mark.skipif(
    not ROUTER_OK, reason=f"dosql.cluster / dosql.driver not importable yet: {ROUTER_WHY}"
)
@pytest.mark.timeout(900)
def test_router_engine_on_select1_to_5_is_never_wrong_and_99_percent_correct(capsys) -> None:
    with engines.router_engine(shards=4) as engine:
        results = runner.run_files(engine, FILES, every=ROUTER_EVERY)
    totals = runner.total_counts(results, "query")
    label = f"1 query in {ROUTER_EVERY}" if ROUTER_EVERY > 1 else "every query"
    _print_report(results, f"router (4 shards, every table sharded; {label})", capsys)
    text = runner.report(results, engine="router", show=10)
    assert totals["total"] > 8_800 // ROUTER_EVERY
    totals = runner.total_counts(results)
    assert totals["wrong"] == 0, text
    assert totals["correct"] >= 0.99 * totals["total"], text


def test_feature_tags_name_what_a_router_must_handle() -> None:
    from tests.conformance import features

    assert features.tags("SELECT a FROM t1 WHERE a > 1 ORDER BY 1") == {"order by", "simple select"}
    assert "subquery:correlated" in features.tags(
        "SELECT (SELECT count(*) FROM t1 AS x WHERE x.b<t1.b) FROM t1"
    )
    uncorrelated = features.tags("SELECT a FROM t1 WHERE c > (SELECT avg(c) FROM t1)")
    assert "subquery:scalar" in uncorrelated and "subquery:correlated" not in uncorrelated
    assert "join:2" in features.tags("SELECT a1, b2 FROM t1, t2 WHERE a1 = b2")
    assert "join:3+" in features.tags("SELECT * FROM t1, t2, t3")
    assert "compound:except" in features.tags("SELECT a FROM t1 EXCEPT SELECT b FROM t2")
    assert "subquery:EXISTS" in features.tags(
        "SELECT a FROM t1 WHERE EXISTS(SELECT 1 FROM t1 AS x WHERE x.b < t1.b)"
    )
    assert features.tags("SELECT (") == {"unparsed"}
    assert features.tags("INSERT INTO t1 VALUES(1)") == {"insert"}
