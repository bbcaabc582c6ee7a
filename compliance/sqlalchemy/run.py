"""Run SQLAlchemy's dialect compliance suite against a fresh local cluster.

``python compliance/sqlalchemy/run.py [pytest args]`` (or ``make sqla-suite``):
starts a 4-shard cluster (no lake, a VSchema that lists no tables, so every
table the suite creates is placed by the default policy, hashed on its
primary key) in a temporary directory, runs the suite
with ``--dburi`` pointing at its router, stops the cluster, and exits with
pytest's status. Not part of ``make test``: it takes minutes and its results
are recorded in this directory's README.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    import vschema as V
    from dosql.cluster import LocalCluster, to_toml

    vs = V.create_vschema(
        {},
        [V.shard(f"shard-{i}") for i in range(4)],
        default_shard="shard-0",
        default_table="shard_by_primary_key",
    )
    with tempfile.TemporaryDirectory(prefix="dosql-sqla-suite-") as tmp:
        config = Path(tmp) / "dosql.toml"
        config.write_text(to_toml({"log_level": "warn", "vschema": vs.to_dict()}), encoding="utf-8")
        with LocalCluster(config, Path(tmp) / "data", lake=False) as cluster:
            assert cluster.url is not None
            command = [sys.executable, "-m", "pytest", "--dburi", cluster.url, *argv]
            return subprocess.run(command, cwd=HERE, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
