"""Run sqllogictest files against an engine and score every record.

An engine is anything with ``execute(sql) -> rows | None`` (rows: a list of
tuples of SQLite values; None for a statement without result columns) and
``reset()`` (drop everything, so the next file starts empty). Each record gets
one outcome:

- ``correct``  the statement succeeded / failed as expected, or the query's
               values (or their hash) match;
- ``wrong``    a result differs from the expected one (never acceptable);
- ``refused``  the engine raised a ``NotSupportedError``: it knows it cannot
               run the statement correctly and said why;
- ``error``    any other exception where success was expected.

Usage::

    python -m tests.conformance.runner [--engine sqlite|router] [--files F ...]
                                       [--json out.json] [--show N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.conformance import slt

STATUSES = ("correct", "wrong", "refused", "error")
FILE_NAMES = tuple(f"select{i}.test" for i in range(1, 6))


def slt_dir() -> Path:
    """Where the .test files live: $DOSQL_SLT_DIR, else ../shared/conformance/slt."""
    env = os.environ.get("DOSQL_SLT_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "conformance" / "slt"


def default_files() -> list[Path]:
    return [slt_dir() / name for name in FILE_NAMES]


class Engine(Protocol):
    name: str

    def execute(self, sql: str) -> list[tuple[Any, ...]] | None: ...

    def reset(self) -> None: ...


class Refused(Exception):
    """An engine's way to say "not supported" without depending on the driver."""


def is_refusal(exc: BaseException) -> bool:
    """A NotSupportedError of any flavour (DB-API driver, dosql.errors) or Refused."""
    return isinstance(exc, Refused) or any(
        cls.__name__ == "NotSupportedError" for cls in type(exc).__mro__
    )


@dataclass
class Outcome:
    path: str
    line: int
    kind: str  # "statement" | "query"
    sql: str
    status: str  # one of STATUSES
    seconds: float
    expected: str = ""
    got: str = ""
    reason: str = ""  # refusal or error message
    # An earlier statement of the same file failed, so the data differs from what
    # the expected results assume: a wrong answer here may be a consequence.
    after_failed_statement: bool = False


@dataclass
class FileResult:
    path: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self, kind: str | None = None) -> dict[str, int]:
        c = Counter(o.status for o in self.outcomes if kind is None or o.kind == kind)
        return {"total": sum(c.values()), **{s: c.get(s, 0) for s in STATUSES}}

    def with_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 400 else text[:400] + "..."


def run_record(engine: Engine, record: slt.Statement | slt.Query) -> Outcome:
    """Execute one statement or query and score it."""
    kind = "statement" if isinstance(record, slt.Statement) else "query"
    start = time.perf_counter()
    try:
        rows = engine.execute(record.sql)
    except Exception as exc:  # every engine failure is scored, none stops the run
        elapsed = time.perf_counter() - start
        if isinstance(record, slt.Statement) and not record.expect_ok:
            status = "correct"
        elif is_refusal(exc):
            status = "refused"
        else:
            status = "error"
        return Outcome(
            record.path, record.line, kind, record.sql, status, elapsed, reason=_message(exc)
        )
    elapsed = time.perf_counter() - start
    if isinstance(record, slt.Statement):
        if record.expect_ok:
            return Outcome(record.path, record.line, kind, record.sql, "correct", elapsed)
        return Outcome(
            record.path, record.line, kind, record.sql, "wrong", elapsed,
            expected="an error", got="success",
        )  # fmt: skip
    cmp = slt.compare(record, rows or [])
    return Outcome(
        record.path, record.line, kind, record.sql, "correct" if cmp.ok else "wrong", elapsed,
        expected="" if cmp.ok else cmp.expected, got="" if cmp.ok else cmp.got,
    )  # fmt: skip


def run_file(
    engine: Engine, path: str | Path, *, limit: int | None = None, every: int = 1
) -> FileResult:
    """Every runnable record of one file, on a freshly reset engine.

    ``every`` > 1 runs every statement but only each ``every``-th query (the
    same ones every time): queries change nothing, so the sample is scored
    on exactly the state the whole file would have.
    """
    engine.reset()
    records = slt.parse_file(path)
    result = FileResult(str(path))
    start = time.perf_counter()
    failed = False
    queries = 0
    for record in slt.iter_runnable(records):
        if isinstance(record, slt.HashThreshold):
            continue  # the expected text already says whether it is hashed
        if isinstance(record, slt.Query):
            queries += 1
            if (queries - 1) % every:
                continue
        outcome = run_record(engine, record)
        outcome.after_failed_statement = failed
        failed = failed or (outcome.kind == "statement" and outcome.status != "correct")
        result.outcomes.append(outcome)
        if limit is not None and len(result.outcomes) >= limit:
            break
    result.seconds = time.perf_counter() - start
    return result


def run_files(
    engine: Engine, paths: Iterable[str | Path], *, limit: int | None = None, every: int = 1
) -> list[FileResult]:
    return [run_file(engine, p, limit=limit, every=every) for p in paths]


# --------------------------------------------------------------------------- reporting


def summary_line(name: str, counts: dict[str, int], seconds: float) -> str:
    total = counts["total"]
    pct = 100.0 * counts["correct"] / total if total else 100.0
    return (
        f"{name:<14} total {total:>6}  correct {counts['correct']:>6}  wrong {counts['wrong']:>4}"
        f"  refused {counts['refused']:>5}  error {counts['error']:>5}  {pct:7.3f}%  {seconds:7.1f}s"
    )


def total_counts(results: Sequence[FileResult], kind: str | None = None) -> dict[str, int]:
    out = Counter[str]()
    for r in results:
        out.update(r.counts(kind))
    return {k: out.get(k, 0) for k in ("total", *STATUSES)}


def report(
    results: Sequence[FileResult], *, engine: str = "", show: int = 5, rates: bool = False
) -> str:
    """Per-file counts, the totals, the first wrong answers, the commonest reasons,
    and the SQL features of what was not correct (with ``rates``: out of how many
    queries had that feature, which parses every query and takes ~15 s)."""
    lines = [f"sqllogictest conformance, engine {engine}" if engine else "sqllogictest"]
    for r in results:
        lines.append(summary_line(Path(r.path).name, r.counts(), r.seconds))
    seconds = sum(r.seconds for r in results)
    lines.append(summary_line("ALL", total_counts(results), seconds))
    lines.append(summary_line("ALL queries", total_counts(results, "query"), seconds))
    records = total_counts(results)["total"]
    if records:
        per = []
        for status in STATUSES:
            times = [o.seconds for r in results for o in r.outcomes if o.status == status]
            if times:
                per.append(f"{status} {1000 * sum(times) / len(times):.2f}")
        lines.append(f"mean time per record {1000 * seconds / records:.2f} ms ({', '.join(per)})")
    wrong = [o for r in results for o in r.with_status("wrong")]
    tainted = sum(o.after_failed_statement for o in wrong)
    if tainted:
        lines.append(
            f"{tainted} of {len(wrong)} wrong answers come after a failed statement of their"
            " file (the data is not what the expected results assume); first ones shown last"
        )
    wrong.sort(key=lambda o: o.after_failed_statement)
    for o in wrong[:show]:
        lines.append(f"WRONG {Path(o.path).name}:{o.line}: {o.sql!r}")
        lines.append(f"    expected {o.expected}")
        lines.append(f"    got      {o.got}")
    for status in ("refused", "error"):
        reasons = Counter(
            _reason_key(o.reason) for r in results for o in r.with_status(status)
        ).most_common(show)
        for reason, n in reasons:
            lines.append(f"{status.upper()} x{n}: {reason}")
    lines += _feature_lines(results, rates=rates)
    return "\n".join(lines)


def _feature_lines(results: Sequence[FileResult], *, rates: bool) -> list[str]:
    from tests.conformance import features

    bad = [o.sql for r in results for o in r.outcomes if o.status != "correct"]
    if not bad:
        return []
    every = [o.sql for r in results for o in r.outcomes] if rates else []
    out = ["not correct, by SQL feature (a statement can have several):"]
    for tag, n, of in features.breakdown(bad, every):
        out.append(f"  {tag:<24} {n:>6}" + (f" of {of:>6}" if rates else ""))
    return out


def _reason_key(reason: str) -> str:
    """A reason without the statement-specific tail, so like failures group together."""
    return reason.split("\n")[0][:200]


def to_json(results: Sequence[FileResult]) -> dict[str, Any]:
    return {
        "files": [
            {
                "path": r.path,
                "seconds": r.seconds,
                "counts": r.counts(),
                "outcomes": [asdict(o) for o in r.outcomes if o.status != "correct"],
            }
            for r in results
        ],
        "totals": total_counts(results),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.runner")
    parser.add_argument("--engine", choices=("sqlite", "router"), default="sqlite")
    parser.add_argument("--files", nargs="*", type=Path, help="default: select1..5 in the slt dir")
    parser.add_argument("--json", type=Path, help="write every non-correct outcome here")
    parser.add_argument("--show", type=int, default=5, help="wrong answers / reasons to print")
    parser.add_argument("--limit", type=int, help="stop each file after this many records")
    parser.add_argument("--shards", type=int, default=4, help="router engine: shard count")
    parser.add_argument(
        "--rates", action="store_true", help="feature breakdown out of all queries (slower)"
    )
    args = parser.parse_args(argv)

    from tests.conformance import engines

    files = args.files or default_files()
    missing = [str(p) for p in files if not Path(p).is_file()]
    if missing:
        print("missing test files: " + ", ".join(missing), file=sys.stderr)
        return 2
    with engines.open_engine(args.engine, shards=args.shards) as engine:
        results = run_files(engine, files, limit=args.limit)
    print(report(results, engine=args.engine, show=args.show, rates=args.rates))
    if args.json:
        args.json.write_text(json.dumps(to_json(results), indent=1))
    return 0 if total_counts(results)["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
