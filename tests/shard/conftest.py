from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shard.client import ShardClient, ShardProcess


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[ShardProcess]:
    proc = ShardProcess(tmp_path / "shard.db").start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def client(shard: ShardProcess) -> Iterator[ShardClient]:
    with shard.client() as c:
        yield c
