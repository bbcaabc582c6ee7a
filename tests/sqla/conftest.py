"""One cluster (4 shards, no lake) for the SQLAlchemy tests.

Its VSchema is the router tests' quickstart one, where ``system_config`` is
unsharded on shard-3 rather than on the default shard, so reflection of a
table that ``sqlite_master`` on the default shard does not show is tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.router.conftest import quickstart_vschema, write_config


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from dosql.cluster import LocalCluster

    data_dir: Path = tmp_path_factory.mktemp("sqla-cluster")
    config = write_config(data_dir / "dosql.toml", quickstart_vschema())
    with LocalCluster(config, data_dir / "data", lake=False) as running:
        assert running.url is not None
        yield running.url
