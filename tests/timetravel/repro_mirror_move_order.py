"""Reproduce a lake writer mirror divergence (not a test; for the lake writer).

Run: ``.venv/bin/python -m tests.timetravel.repro_mirror_move_order``

Two shards, rows moving between them (delete on the old shard, then insert on
the new one), shard-1 streamed far behind shard-0 across several flushes.
After everything is flushed the mirror should hold exactly the shards' rows;
it misses some moved rows: a later flush applies shard-1's *older* image of a
row over shard-0's newer one (taking ownership), and shard-1's older delete
then removes it. ``dolake.history`` is exact anyway (it rebuilds keys changed
by several shards from the change log), but the mirror and AS OF SNAPSHOT
show the divergence.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dolake import readers
from tests.lake.helpers import Lake

from .test_history import SLOW_FLUSH, feed
from .workload import LAKE_CONFIG, Workload


def main() -> int:
    lake = Lake(Path(tempfile.mkdtemp()), env=SLOW_FLUSH, config=LAKE_CONFIG).start()
    try:
        w = Workload(23)
        for _ in range(250):
            w.step()
        feed(lake, w, 7, seed=23)
        mirror = {r["id"] for r in readers.scan(lake.catalog(), "users").to_pylist()}
        truth = {r[0] for r in w.replay()["users"]}
        print(f"mirror {len(mirror)} rows, shards {len(truth)} rows")
        print("missing from mirror:", sorted(truth - mirror), "extra:", sorted(mirror - truth))
        return 0 if mirror == truth else 1
    finally:
        lake.stop()


if __name__ == "__main__":
    raise SystemExit(main())
