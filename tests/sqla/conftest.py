"""One quickstart cluster (4 shards, no lake) for the SQLAlchemy tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.driver.conftest import ROOT

QUICKSTART = ROOT / "examples" / "quickstart" / "dosql.toml"


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from dosql.cluster import LocalCluster

    data_dir: Path = tmp_path_factory.mktemp("sqla-cluster")
    with LocalCluster(QUICKSTART, data_dir, lake=False) as running:
        assert running.url is not None
        yield running.url
