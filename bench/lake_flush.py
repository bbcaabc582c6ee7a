"""lake_flush: one flush of 10,000 changes into a mirror of 1,000,000 vs 100,000 rows.

Ours: the lake writer's own code (``dolake.writer.Writer.flush_table``, in
process, no network) flushing a batch of updates and deletes at random keys --
change log and mirror, two Iceberg commits, as the server does. The mirror is
loaded by a fast path (one pyarrow append of all rows under the writer's own
schema and watermark); the key index the writer keeps is then built by an
untimed warm-up flush. The flush must not grow with the table: the ratio of
the two sizes is the figure that matters.
Baseline: writing the same changed rows with raw pyarrow (``pq.write_table``),
the format's own speed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.harness import Context, Figure, Report
from dolake.buffer import Entry
from dolake.catalog import open_catalog
from dolake.schema import OVERFLOW, SHARD_COL
from dolake.writer import Writer, _props
from dosql import config as config_mod
from dosql import protocol

SHARD = "shard-0"
COLS = [
    protocol.ColumnInfo("id", "INTEGER", True, 1),
    protocol.ColumnInfo("name", "TEXT", False, 0),
    protocol.ColumnInfo("amount", "REAL", False, 0),
]
TS = 1_700_000_000_000_000


def _row(i: int, version: int = 0) -> dict:
    return {"id": i, "name": f"name-{i:07d}-v{version}", "amount": i * 1.5 + version}


class Mirror:
    """One table in its own lake, loaded to ``rows`` rows, with a model of it."""

    def __init__(self, workdir: Path, rows: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.writer = Writer(
            open_catalog(config_mod.default().lake, workdir), index_dir=workdir / "index"
        )
        self.lsn = 0
        self.live = list(range(rows))
        self.pos = {k: k for k in self.live}  # key -> its index in self.live
        self.version: dict[int, int] = {}
        self.rnd = random.Random(rows)
        schema = protocol.TableSchema(action="create", columns=COLS, primary_key=["id"])
        self._flush([self._change("schema", schema=schema)])
        lt = self.writer.tables["t"]
        assert lt.mirror is not None
        data = pa.table(
            {
                "id": pa.array(range(rows), pa.int64()),
                "name": [f"name-{i:07d}-v0" for i in range(rows)],
                "amount": pa.array([i * 1.5 for i in range(rows)], pa.float64()),
                SHARD_COL: pa.array([SHARD] * rows, pa.string()),
                OVERFLOW: pa.nulls(rows, pa.string()),
            }
        )
        self.lsn += 1  # the load counts as one change of shard-0
        lt.mirror.append(data, snapshot_properties=_props({SHARD: self.lsn}))
        lt.mirror_wm = {SHARD: self.lsn}

    def _change(self, op: str, **kw) -> Entry:
        self.lsn += 1
        ch = protocol.Change(self.lsn, self.lsn, TS + self.lsn, "t", op, **kw)
        return Entry(SHARD, ch, 64)

    def _flush(self, entries: list[Entry]):
        return self.writer.flush_table("t", entries, {SHARD: self.lsn})

    def batch(self, n: int) -> tuple[list[Entry], pa.Table]:
        """``n`` changes at distinct random live keys: 80% updates, 20% deletes."""
        keys = self.rnd.sample(self.live, n)
        entries, images = [], []
        for k in keys:
            v = self.version.get(k, 0)
            before = _row(k, v)
            if self.rnd.random() < 0.8:
                after = _row(k, v + 1)
                self.version[k] = v + 1
                entries.append(self._change("update", key=[k], before=before, after=after))
                images.append(after)
            else:
                entries.append(self._change("delete", key=[k], before=before))
                images.append(before)
                self._drop(k)
        return entries, pa.Table.from_pylist(images)

    def _drop(self, k: int) -> None:
        i = self.pos.pop(k)
        last = self.live.pop()
        if last != k:
            self.live[i] = last
            self.pos[last] = i

    def timed_flush(self, n: int, baseline_dir: Path) -> tuple[float, float, int]:
        """Flush one batch; return (our ms, pyarrow ms for the same rows, files written)."""
        entries, images = self.batch(n)
        t0 = time.perf_counter()
        res = self._flush(entries)
        ours = (time.perf_counter() - t0) * 1000
        if res.error:
            raise RuntimeError(res.error)
        baseline_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        pq.write_table(images, baseline_dir / f"batch-{self.lsn}.parquet")
        base = (time.perf_counter() - t0) * 1000
        return ours, base, res.files_written + res.delete_files_written

    def rows(self) -> int:
        lt = self.writer.tables["t"]
        assert lt.mirror is not None
        return len(lt.mirror.scan(selected_fields=("id",)).to_arrow())


def run(ctx: Context) -> Report:
    small, big, changes = (10_000, 100_000, 1_000) if ctx.quick else (100_000, 1_000_000, 10_000)
    label = {small: _short(small), big: _short(big)}
    report = Report(
        "lake_flush",
        params={"small_rows": small, "big_rows": big, "changes": changes, "mix": "80% upd/20% del"},
    )
    base_all: list[float] = []
    for rows in (small, big):
        t0 = time.perf_counter()
        m = Mirror(ctx.workdir / f"lake_flush-{rows}", rows)
        load_s = time.perf_counter() - t0
        files: list[int] = []
        samples: list[tuple[float, float]] = []

        def one(m=m, files=files, samples=samples) -> float:
            ours, base, n_files = m.timed_flush(changes, ctx.workdir / "lake_flush-pyarrow")
            files.append(n_files)
            samples.append((ours, base))
            return ours

        t0 = time.perf_counter()
        one()  # warm-up: also builds the writer's key index from the mirror (O(table), once)
        warm_s = time.perf_counter() - t0
        samples.clear()
        ours_ms = [one() for _ in range(ctx.runs)]
        base_all += [b for _, b in samples]
        report.figures.append(Figure(f"flush_ms_{label[rows]}_rows", "ms", ours_ms))
        report.notes.append(
            f"{label[rows]} rows: load {load_s:.1f} s, first flush (index rebuild) {warm_s:.1f} s, "
            f"files written per flush {sorted(set(files))}, mirror rows after {m.rows()}"
        )
    report.baselines.append(Figure("pyarrow_write_ms", "ms", base_all))
    s, b = label[small], label[big]
    report.ratios += [
        (f"flush_{b}_over_{s}", f"flush_ms_{b}_rows", f"flush_ms_{s}_rows"),
        (f"flush_{b}_over_pyarrow", f"flush_ms_{b}_rows", "pyarrow_write_ms"),
        (f"flush_{s}_over_pyarrow", f"flush_ms_{s}_rows", "pyarrow_write_ms"),
    ]
    report.goals = {
        f"flush_ms_{b}_rows": "<= 1000 ms",
        f"flush_{b}_over_{s}": "<= 1.5x",
    }
    return report


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


if __name__ == "__main__":  # a single quick run without the harness
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        from bench import harness

        print(harness.render(run(Context(quick=True, runs=5, workdir=Path(tmp)))))
