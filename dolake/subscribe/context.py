"""What a subscriber session needs from its host process: shards, token, lake, limits.

Built once per process from the deployment config (:meth:`SubscribeContext.from_config`).
Shard addresses come from the config's VSchema; a launcher such as
``LocalCluster`` starts the lake writer before the shards and fills their
addresses into ``cluster.toml`` afterwards, so when an address is missing the
config file is read again (at most once a second).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dosql import config as config_mod
from dosql.config import Config
from dosql.errors import RPCError

log = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    """Per-subscriber limits (environment overrides in parentheses)."""

    queue_size: int = 1000  # events buffered for one subscriber (DOLAKE_SUBSCRIBE_QUEUE_SIZE)
    read_batch: int = 500  # changes pulled from a shard per read (DOLAKE_SUBSCRIBE_READ_BATCH)
    max_lag: int = 100_000  # changes behind a shard's head... (DOLAKE_SUBSCRIBE_MAX_LAG)
    grace_s: float = 30.0  # ...for longer than this -> SUBSCRIBER_TOO_SLOW (…_LAG_GRACE_S)
    heartbeat_s: float = 5.0  # heartbeat period (DOLAKE_SUBSCRIBE_HEARTBEAT_S)
    poll_s: float = 0.1  # shard log poll period when caught up (DOLAKE_SUBSCRIBE_POLL_S)
    hello_timeout_s: float = 30.0  # wait for the subscribe message
    # a distributed transaction's part waits this long for its sibling parts on other
    # shards, then is delivered without them (DOLAKE_SUBSCRIBE_DTX_WAIT_S)
    dtx_wait_s: float = 5.0

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            queue_size=max(1, _env_int("DOLAKE_SUBSCRIBE_QUEUE_SIZE", cls.queue_size)),
            read_batch=max(1, _env_int("DOLAKE_SUBSCRIBE_READ_BATCH", cls.read_batch)),
            max_lag=max(1, _env_int("DOLAKE_SUBSCRIBE_MAX_LAG", cls.max_lag)),
            grace_s=max(0.0, _env_float("DOLAKE_SUBSCRIBE_LAG_GRACE_S", cls.grace_s)),
            heartbeat_s=max(0.05, _env_float("DOLAKE_SUBSCRIBE_HEARTBEAT_S", cls.heartbeat_s)),
            poll_s=max(0.005, _env_float("DOLAKE_SUBSCRIBE_POLL_S", cls.poll_s)),
            dtx_wait_s=max(0.0, _env_float("DOLAKE_SUBSCRIBE_DTX_WAIT_S", cls.dtx_wait_s)),
        )


@dataclass
class SubscribeContext:
    config: Config
    data_dir: Path
    limits: Limits = field(default_factory=Limits.from_env)
    _catalog: Any = None
    _shards: dict[str, str] = field(default_factory=dict)
    _order: list[str] = field(default_factory=list)
    _reference: dict[str, str] = field(default_factory=dict)
    _loaded_at: float = 0.0

    @classmethod
    def from_config(
        cls, config: Config, data_dir: str | Path, limits: Limits | None = None
    ) -> SubscribeContext:
        ctx = cls(config, Path(data_dir), limits or Limits.from_env())
        try:
            ctx._load(config)
        except Exception as exc:  # no VSchema yet: subscribers get SHARD_UNAVAILABLE
            log.info("no VSchema for subscribers", extra={"reason": str(exc)})
        return ctx

    def _load(self, config: Config) -> None:
        vs = config.load_vschema()
        self._order = list(vs.shard_ids)
        self._shards = {s.id: s.address for s in vs.shards if s.address}
        self._reference = {
            name.lower(): vs.shard_ids[0]
            for name, t in vs.tables.items()
            if t.kind == "reference" and vs.shard_ids
        }
        self._loaded_at = time.monotonic()

    def shards(self) -> dict[str, str]:
        """Shard id -> WebSocket address, in VSchema order; RPCError if one is unknown."""
        incomplete = not self._order or len(self._shards) < len(self._order)
        if incomplete and self.config.source is not None:
            # A launcher fills the addresses in after starting the shards (the lake
            # starts first); re-reading the small config file is cheap.
            try:
                self._load(config_mod.load(self.config.source))
            except Exception as exc:  # keep the old view; report below
                log.warning("config reload failed", extra={"error": str(exc)})
        if not self._order:
            raise RPCError(
                "no VSchema (shards) in the configuration: subscribers need the shard addresses",
                code="SHARD_UNAVAILABLE",
            )
        missing = [s for s in self._order if s not in self._shards]
        if missing:
            raise RPCError(
                f"no address known for shard(s) {', '.join(missing)} yet; retry shortly",
                code="SHARD_UNAVAILABLE",
            )
        return {s: self._shards[s] for s in self._order}

    @property
    def reference_tables(self) -> dict[str, str]:
        """Reference table (lower-case) -> the one shard its changes are delivered from."""
        return self._reference

    @property
    def token(self) -> str | None:
        """The admin token used to talk to shards (None on an open cluster)."""
        for t in self.config.tokens:
            if t.scope == "admin":
                return t.token
        return None

    @property
    def namespace(self) -> str:
        return self.config.lake.namespace

    def catalog(self) -> Any:
        """The lake's pyiceberg catalog (opened on first use: blocking, call from a thread)."""
        if self._catalog is None:
            from dolake.catalog import open_catalog

            self._catalog = open_catalog(self.config.lake, self.data_dir)
        return self._catalog
