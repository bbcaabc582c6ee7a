"""The pushdown fuzzer (tests/router/fuzz_pushdown.py) on a fixed budget.

``make test`` runs ``DOSQL_FUZZ_EXAMPLES`` statements (default 300, a few seconds) from seed
``DOSQL_FUZZ_SEED`` (default 14) against a real 4-shard cluster; ``make fuzz``
runs many more. Any statement whose answer through the router differs from
plain SQLite's fails the test with the statement, the schema and the rows, so
it can be turned into a regression test in test_pushdown_regressions.py.
"""

from __future__ import annotations

import os

from tests.router import fuzz_pushdown as F
from tests.router.pushdown_cluster import cluster_fixture

pushdown_conn = cluster_fixture()


def test_pushdown_paths_match_sqlite(pushdown_conn) -> None:
    budget = int(os.environ.get("DOSQL_FUZZ_EXAMPLES", "300"))
    seed = int(os.environ.get("DOSQL_FUZZ_SEED", "14"))
    stats, _ = F.fuzz(pushdown_conn, seed, budget)
    print(
        f"\npushdown fuzz: seed {seed}, {stats.statements} statements, {stats.compared} "
        f"compared ({stats.representatives} up to int/real representatives), "
        f"{stats.both_failed} failed on both, {sum(stats.refused.values())} refused, "
        f"{len(stats.mismatches)} mismatches"
    )
    for why, n in stats.refused.most_common(5):
        print(f"  refused {n}x: {why}")
    assert stats.statements >= budget
    assert not stats.mismatches, "\n\n".join(stats.mismatches[:10])
    # refusals must stay rare: the pushdown paths fall back instead of refusing
    assert sum(stats.refused.values()) <= stats.statements // 20, stats.refused
