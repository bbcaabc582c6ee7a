"""One local cluster (3 shards, lake writer) and one subscribe server for the whole suite.

The lake flushes only when asked (the history test does), so until then the
shards keep their whole change log and tests can compare events against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vschema as V
from dosql.cluster import LocalCluster, to_toml

from .helpers import ADMIN, READ, SubscribeServer

SUB_ENV = {"DOLAKE_SUBSCRIBE_HEARTBEAT_S": "0.3", "DOLAKE_SUBSCRIBE_POLL_S": "0.02"}


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        vs = V.create_vschema(
            {
                "accounts": V.sharded_table("id", V.hash_vindex()),
                "notes": V.sharded_table("id", V.hash_vindex()),
                "countries": V.reference_table(),
                "settings": V.unsharded_table("shard-2"),
            },
            [V.shard("shard-0"), V.shard("shard-1"), V.shard("shard-2")],
        )
        config = root / "dosql.toml"
        config.write_text(
            to_toml(
                {
                    "log_level": "info",
                    "vschema": vs.to_dict(),
                    "auth": {
                        "tokens": [
                            {"token": ADMIN, "scope": "admin"},
                            {"token": READ, "scope": "read"},
                        ]
                    },
                    "lake": {
                        "flush_interval_ms": 3_600_000,
                        "event_threshold": 10_000_000,
                        "max_buffer_size": 1 << 30,
                    },
                }
            )
        )
        self.cluster = LocalCluster(config, root / "data", lake=True)
        self.servers: list[SubscribeServer] = []
        try:
            self.sub = self.server(SUB_ENV)
        except BaseException:
            self.cluster.stop()
            raise

    @property
    def cluster_config(self) -> Path:
        return self.cluster.cluster_config

    def server(self, env: dict[str, str]) -> SubscribeServer:
        n = len(self.servers)
        srv = SubscribeServer(self.cluster_config, self.root / f"subscribe-{n}.log", env)
        self.servers.append(srv)
        return srv

    def connect(self, autocommit: bool = True) -> Any:
        import dosql

        return dosql.connect(self.cluster.url, token=ADMIN, autocommit=autocommit)

    def close(self) -> None:
        for srv in self.servers:
            srv.stop()
        self.cluster.stop()


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory):
    e = Env(tmp_path_factory.mktemp("subscribe"))
    try:
        yield e
    finally:
        e.close()
