"""Does a flush's cost grow with the size of the mirror? (``python -m dolake.bench_flush``)

Loads a table in the lake writer's own code path (Writer, in process, no
network) to several sizes, then times flushes of a fixed-size batch of
updates + deletes -- to recently written keys and to random keys -- and
prints the time and the number of files written (data + position deletes; no
data file is ever rewritten since the mirror is merge-on-read). Not a test: numbers
depend on the machine; the point is the trend across sizes.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from dolake.buffer import Entry
from dolake.catalog import open_catalog
from dolake.writer import Writer
from dosql import config as config_mod
from dosql import protocol

COLS = [
    protocol.ColumnInfo("id", "INTEGER", True, 1),
    protocol.ColumnInfo("name", "TEXT", False, 0),
    protocol.ColumnInfo("amount", "REAL", False, 0),
]


class Feed:
    def __init__(self) -> None:
        self.lsn = 0

    def change(self, op: str, **kw) -> Entry:
        self.lsn += 1
        ch = protocol.Change(self.lsn, self.lsn, 1_700_000_000_000_000 + self.lsn, "t", op, **kw)
        return Entry("shard-0", ch, 64)

    def row(self, i: int) -> dict:
        return {"id": i, "name": f"name-{i}", "amount": i * 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,300000")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--load-batch", type=int, default=50000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_mod.default()
        writer = Writer(open_catalog(cfg.lake, Path(tmp)))
        feed = Feed()
        schema = protocol.TableSchema(action="create", columns=COLS, primary_key=["id"])
        writer.flush_table("t", [feed.change("schema", schema=schema)], {"shard-0": feed.lsn})
        size = 0
        rnd = random.Random(1)
        print(f"{'rows':>9} {'kind':>7} {'ms':>8} {'data':>5} {'deletes':>7}")
        for target in (int(s) for s in args.sizes.split(",")):
            while size < target:
                n = min(args.load_batch, target - size)
                entries = [
                    feed.change("insert", key=[i], after=feed.row(i)) for i in range(size, size + n)
                ]
                writer.flush_table("t", entries, {"shard-0": feed.lsn})
                size += n
            for kind in ("recent", "random"):
                window = min(size, 5000) if kind == "recent" else size
                keys = {size - 1 - rnd.randrange(window) for _ in range(args.batch)}
                entries = []
                for k in keys:
                    before = feed.row(k)
                    entries.append(
                        feed.change(
                            "update",
                            key=[k],
                            before=before,
                            after={**before, "amount": before["amount"] + 1},
                        )
                    )
                start = time.perf_counter()
                res = writer.flush_table("t", entries, {"shard-0": feed.lsn})
                ms = (time.perf_counter() - start) * 1000
                print(
                    f"{size:>9} {kind:>7} {ms:>8.0f} {res.files_written:>5} "
                    f"{res.delete_files_written:>7}"
                )


if __name__ == "__main__":
    main()
