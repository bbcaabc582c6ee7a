"""Deployment configuration: one TOML file, every setting overridable by environment.

The file has sections ``[router]``, ``[shard]``, ``[lake]``, ``[cdc]`` and
``[auth]``, a top-level ``log_level``, and the VSchema either inline
(``[vschema]``) or as a path (``vschema = "vschema.toml"``, relative to the
config file). Each setting that the reference operations guide names has its
environment variable (``DOSQL_QUERY_TIMEOUT_MS`` …), which wins over the file;
defaults are the guide's. A bad value fails at load time with a
:class:`ConfigurationError` naming the setting, where it came from, and the
expected form — never later, in the middle of serving.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dosql.errors import ConfigurationError

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


@dataclass(frozen=True)
class Setting:
    """One configurable value: where it lives in TOML, its env var, its type."""

    section: str
    key: str
    env: str | None
    default: Any
    kind: str  # "int", "str", "bool", "choice"
    minimum: int | None = None
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}" if self.section else self.key


def _s(
    section: str, key: str, env: str | None, default: Any, kind: str = "int", **kw: Any
) -> Setting:
    return Setting(section, key, env, default, kind, **kw)


SETTINGS: tuple[Setting, ...] = (
    _s("", "log_level", "LOG_LEVEL", "info", "choice", choices=LOG_LEVELS),
    # router
    _s("router", "host", "DOSQL_ROUTER_HOST", "127.0.0.1", "str"),
    _s("router", "port", "DOSQL_ROUTER_PORT", 0, minimum=0),
    _s("router", "query_timeout_ms", "DOSQL_QUERY_TIMEOUT_MS", 30000, minimum=1),
    _s("router", "shard_timeout_ms", "SHARD_TIMEOUT_MS", 10000, minimum=1),
    _s("router", "max_parallel_shards", "MAX_PARALLEL_SHARDS", 8, minimum=1),
    _s("router", "plan_cache_size", "DOSQL_PLAN_CACHE_SIZE", 1024, minimum=0),
    # memory one router-side result may take (a cross join must not take the router down)
    _s("router", "query_memory_mb", "DOSQL_QUERY_MEMORY_MB", 512, minimum=1),
    # requests slower than this are logged (warn) and counted (the guide's 100 ms warning)
    _s("router", "slow_query_ms", "DOSQL_SLOW_QUERY_MS", 100, minimum=1),
    # ids a router reserves from a sequence at a time (dosql/router/sequences.py)
    _s("router", "sequence_block", "DOSQL_SEQUENCE_BLOCK", 1000, minimum=1),
    # two-phase commit for transactions that wrote on several shards (router/twophase.py);
    # false: commit them shard after shard, best effort (a kill can leave one half-applied)
    _s("router", "atomic_commit", "DOSQL_ATOMIC_COMMIT", True, "bool"),
    # how often the resolver looks for prepared transactions that lost their router
    _s("router", "resolver_interval_ms", "DOSQL_RESOLVER_INTERVAL_MS", 1000, minimum=10),
    # Address clients use to reach the router (written by the launcher into
    # cluster.toml, read by the CLI when it runs beside the data directory).
    _s("router", "url", "DOSQL_URL", "", "str"),
    # shard
    _s("shard", "host", "DOSQL_SHARD_HOST", "127.0.0.1", "str"),
    _s("shard", "shard_count", "SHARD_COUNT", 16, minimum=1),
    _s("shard", "query_timeout_ms", "DOSQL_QUERY_TIMEOUT_MS", 30000, minimum=1),
    _s("shard", "wal_segment_size", "DOSQL_WAL_SEGMENT_SIZE", 10485760, minimum=1024),
    _s("shard", "synchronous", "DOSQL_SYNCHRONOUS", "NORMAL", "choice", choices=("NORMAL", "FULL")),
    _s("shard", "cache_size", "DOSQL_CACHE_SIZE", -64000),
    _s("shard", "mmap_size", "DOSQL_MMAP_SIZE", 268435456, minimum=0),
    # FILE, not the guide's MEMORY: with temp files in memory SQLite's sorter
    # mallocs every record on its own, which made a 250k-row GROUP BY 1.8x slower
    # (bench scatter_aggregate); the sorter still sorts in memory up to cache_size.
    _s("shard", "temp_store", "DOSQL_TEMP_STORE", "FILE", "choice", choices=("FILE", "MEMORY")),
    _s("shard", "busy_timeout_ms", "DOSQL_BUSY_TIMEOUT_MS", 5000, minimum=0),
    # How long a writer queues for a shard's write lock (dosql/shard/writelock.py)
    # before DATABASE_LOCKED. Keep it below the router's shard_timeout_ms, which
    # bounds every shard request including that wait.
    _s("shard", "lock_timeout_ms", "DOSQL_LOCK_TIMEOUT_MS", 5000, minimum=1),
    _s("shard", "max_message_size", "DOSQL_MAX_MESSAGE_SIZE", 16 * 1024 * 1024, minimum=1024),
    _s("shard", "result_chunk_rows", "DOSQL_RESULT_CHUNK_ROWS", 1000, minimum=1),
    # /health/deep reports storage "full" below this much free space on the database's
    # filesystem (dosql/shard/storage.py): room for a checkpoint and a burst of writes.
    _s("shard", "min_free_bytes", "DOSQL_MIN_FREE_BYTES", 64 * 1024 * 1024, minimum=0),
    # lake
    _s("lake", "host", "DOLAKE_HOST", "127.0.0.1", "str"),
    _s("lake", "port", "DOLAKE_PORT", 0, minimum=0),
    # Address other services use to reach the lake writer (set by the launcher).
    _s("lake", "url", "DOLAKE_URL", "", "str"),
    _s("lake", "warehouse", "DOLAKE_WAREHOUSE", "", "str"),
    _s("lake", "catalog_uri", "DOLAKE_CATALOG_URI", "", "str"),
    _s("lake", "catalog_name", "DOLAKE_CATALOG_NAME", "dosql", "str"),
    _s("lake", "namespace", "DOLAKE_NAMESPACE", "default", "str"),
    _s("lake", "flush_interval_ms", "DOLAKE_FLUSH_INTERVAL_MS", 60000, minimum=1),
    _s("lake", "max_buffer_size", "DOLAKE_MAX_BUFFER_SIZE", 67108864, minimum=1024),
    _s("lake", "event_threshold", "DOLAKE_EVENT_THRESHOLD", 10000, minimum=1),
    _s("lake", "parquet_row_group_size", "DOLAKE_PARQUET_ROW_GROUP_SIZE", 100000, minimum=1),
    # partitions of a new mirror: 0 = unpartitioned (one data + one delete file per
    # flush); N = bucket(N, first key column), the former layout with N = 16
    _s("lake", "mirror_buckets", "DOLAKE_MIRROR_BUCKETS", 0, minimum=0),
    # snapshot expiry (dolake/maintenance.py): snapshots older than the retention window
    # are expired (but always the min_snapshots_to_keep newest and the current one are
    # kept) and the files only they referenced deleted; time travel before the window
    # is refused with SNAPSHOT_EXPIRED. Run every expire_interval_ms (0: only on request).
    _s("lake", "snapshot_retention_ms", "DOLAKE_SNAPSHOT_RETENTION_MS", 7 * 86_400_000, minimum=0),
    _s("lake", "min_snapshots_to_keep", "DOLAKE_MIN_SNAPSHOTS_TO_KEEP", 10, minimum=1),
    _s("lake", "expire_interval_ms", "DOLAKE_EXPIRE_INTERVAL_MS", 3_600_000, minimum=0),
    # old metadata.json files kept per table (Iceberg write.metadata.previous-versions-max)
    _s("lake", "metadata_versions_max", "DOLAKE_METADATA_VERSIONS_MAX", 100, minimum=1),
    # compaction (dolake/compaction.py; names from the operations guide, dolake/README.md
    # "Maintenance: compaction" says why these defaults): per partition, once at least
    # min_files_threshold small files (< target_file_size_bytes) are older than
    # min_partition_age_ms, up to max_files_per_compaction of them are rewritten with
    # their position deletes; every compaction_interval_ms (0: only on request).
    _s("lake", "min_files_threshold", "DOLAKE_MIN_FILES_THRESHOLD", 10, minimum=2),
    _s(
        "lake",
        "target_file_size_bytes",
        "DOLAKE_TARGET_FILE_SIZE_BYTES",
        32 * 1024 * 1024,
        minimum=1024,
    ),
    _s("lake", "max_files_per_compaction", "DOLAKE_MAX_FILES_PER_COMPACTION", 50, minimum=2),
    _s("lake", "min_partition_age_ms", "DOLAKE_MIN_PARTITION_AGE_MS", 0, minimum=0),
    _s("lake", "compaction_interval_ms", "DOLAKE_COMPACTION_INTERVAL_MS", 60_000, minimum=0),
    # orphan files (dolake/orphans.py): unreferenced files in the tables' directories are
    # deleted once older than this (with each expiry run, and on request)
    _s("lake", "orphan_min_age_ms", "DOLAKE_ORPHAN_MIN_AGE_MS", 3_600_000, minimum=0),
    # cdc
    _s("cdc", "batch_size", "CDC_BATCH_SIZE", 100, minimum=1),
    _s("cdc", "batch_timeout_ms", "CDC_BATCH_TIMEOUT_MS", 5000, minimum=1),
    _s("cdc", "max_retry_count", "CDC_MAX_RETRY_COUNT", 5, minimum=0),
    _s("cdc", "retry_delay_ms", "CDC_RETRY_DELAY_MS", 1000, minimum=1),
)


@dataclass(frozen=True)
class RouterConfig:
    host: str
    port: int
    query_timeout_ms: int
    shard_timeout_ms: int
    max_parallel_shards: int
    plan_cache_size: int
    sequence_block: int = 1000
    atomic_commit: bool = True
    resolver_interval_ms: int = 1000
    query_memory_mb: int = 512
    slow_query_ms: int = 100
    url: str = ""


@dataclass(frozen=True)
class ShardConfig:
    host: str
    shard_count: int
    query_timeout_ms: int
    wal_segment_size: int
    synchronous: str
    cache_size: int
    mmap_size: int
    temp_store: str
    busy_timeout_ms: int
    lock_timeout_ms: int
    max_message_size: int
    result_chunk_rows: int
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class LakeConfig:
    host: str
    port: int
    url: str
    warehouse: str
    catalog_uri: str
    catalog_name: str
    namespace: str
    flush_interval_ms: int
    max_buffer_size: int
    event_threshold: int
    parquet_row_group_size: int
    mirror_buckets: int = 0
    snapshot_retention_ms: int = 7 * 86_400_000
    min_snapshots_to_keep: int = 10
    expire_interval_ms: int = 3_600_000
    metadata_versions_max: int = 100
    min_files_threshold: int = 10
    target_file_size_bytes: int = 32 * 1024 * 1024
    max_files_per_compaction: int = 50
    min_partition_age_ms: int = 0
    compaction_interval_ms: int = 60_000
    orphan_min_age_ms: int = 3_600_000
    # Extra pyiceberg catalog properties / pyarrow filesystem options, passed through.
    catalog_properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CDCConfig:
    batch_size: int
    batch_timeout_ms: int
    max_retry_count: int
    retry_delay_ms: int


@dataclass(frozen=True)
class Token:
    token: str
    scope: str  # "read" or "admin"


@dataclass(frozen=True)
class Config:
    log_level: str
    router: RouterConfig
    shard: ShardConfig
    lake: LakeConfig
    cdc: CDCConfig
    tokens: tuple[Token, ...] = ()
    # The raw VSchema: an inline mapping, or None with ``vschema_path`` set.
    vschema_data: dict[str, Any] | None = None
    vschema_path: Path | None = None
    source: Path | None = None

    def load_vschema(self) -> Any:
        """The deployment's VSchema (a ``vschema.VSchema``)."""
        import vschema

        if self.vschema_data is not None:
            return vschema.from_dict(
                self.vschema_data,
                source=str(self.source or "<config>"),
                default_shard_count=self.shard.shard_count,
            )
        if self.vschema_path is not None:
            return vschema.load(self.vschema_path, default_shard_count=self.shard.shard_count)
        raise ConfigurationError(
            'no VSchema configured: add a [vschema] section or `vschema = "path.toml"`',
            code="MISSING_CONFIG",
        )


def _convert(setting: Setting, raw: Any, origin: str) -> Any:
    def bad(expected: str) -> ConfigurationError:
        return ConfigurationError(
            f"invalid value {raw!r} for setting {setting.name} (from {origin}): expected {expected}",
            details={"setting": setting.name, "env": setting.env, "value": repr(raw)},
        )

    if setting.kind == "int":
        if isinstance(raw, bool):
            raise bad("an integer")
        if isinstance(raw, str):
            try:
                raw_int = int(raw.strip().replace("_", ""))
            except ValueError:
                raise bad("an integer") from None
        elif isinstance(raw, int):
            raw_int = raw
        else:
            raise bad("an integer")
        if setting.minimum is not None and raw_int < setting.minimum:
            raise bad(f"an integer >= {setting.minimum}")
        return raw_int
    if setting.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return raw.lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    if setting.kind == "choice":
        value = str(raw).strip()
        for choice in setting.choices:
            if value.lower() == choice.lower():
                return choice
        raise bad("one of " + ", ".join(setting.choices))
    if not isinstance(raw, str):
        raise bad("a string")
    return raw


def _resolve(
    data: Mapping[str, Any], env: Mapping[str, str], source: str
) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        section = data if not setting.section else data.get(setting.section, {})
        if not isinstance(section, Mapping):
            raise ConfigurationError(
                f"[{setting.section}] in {source} must be a table",
                details={"setting": setting.section},
            )
        if setting.env and setting.env in env:
            value = _convert(setting, env[setting.env], f"environment variable {setting.env}")
        elif setting.key in section:
            value = _convert(setting, section[setting.key], source)
        else:
            value = setting.default
        values.setdefault(setting.section, {})[setting.key] = value
    return values


def _check_unknown_keys(data: Mapping[str, Any], source: str) -> None:
    known: dict[str, set[str]] = {}
    for setting in SETTINGS:
        known.setdefault(setting.section, set()).add(setting.key)
    known[""] |= {"vschema", "router", "shard", "lake", "cdc", "auth"}
    known["lake"].add("catalog_properties")
    known["auth"] = {"tokens"}
    for key, value in data.items():
        if key not in known[""]:
            raise ConfigurationError(
                f"unknown setting {key!r} in {source}; known top-level keys: "
                + ", ".join(sorted(known[""])),
                details={"setting": key},
            )
        if key in known and key != "" and isinstance(value, Mapping):
            for sub in value:
                if sub not in known[key]:
                    raise ConfigurationError(
                        f"unknown setting {key}.{sub} in {source}; known: "
                        + ", ".join(sorted(known[key])),
                        details={"setting": f"{key}.{sub}"},
                    )


def _tokens(data: Mapping[str, Any], env: Mapping[str, str], source: str) -> tuple[Token, ...]:
    if "DOSQL_TOKENS" in env:  # "token:scope,token:scope"
        entries: list[Any] = []
        for part in filter(None, (p.strip() for p in env["DOSQL_TOKENS"].split(","))):
            token, _, scope = part.partition(":")
            entries.append({"token": token, "scope": scope or "admin"})
        origin = "environment variable DOSQL_TOKENS"
    else:
        auth = data.get("auth", {})
        raw = auth.get("tokens", []) if isinstance(auth, Mapping) else None
        if not isinstance(raw, list):
            raise ConfigurationError(
                f"auth.tokens in {source} must be an array of "
                '{token = "<secret>", scope = "read" | "admin"} tables',
                details={"setting": "auth.tokens"},
            )
        entries = list(raw)
        origin = source
    tokens = []
    for entry in entries:
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("token"), str)
            or not entry["token"]
            or entry.get("scope", "admin") not in ("read", "admin")
        ):
            raise ConfigurationError(
                f"invalid auth.tokens entry {entry!r} (from {origin}): expected "
                '{token = "<secret>", scope = "read" | "admin"}',
                details={"setting": "auth.tokens"},
            )
        tokens.append(Token(entry["token"], entry.get("scope", "admin")))
    return tuple(tokens)


def from_dict(
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
    base_dir: Path | None = None,
) -> Config:
    env = os.environ if env is None else env
    _check_unknown_keys(data, source)
    values = _resolve(data, env, source)
    vs = data.get("vschema")
    vschema_data = vschema_path = None
    if isinstance(vs, Mapping):
        vschema_data = dict(vs)
    elif isinstance(vs, str):
        vschema_path = (base_dir or Path.cwd()) / vs
    elif vs is not None:
        raise ConfigurationError(
            f"vschema in {source} must be a table or a path string", details={"setting": "vschema"}
        )
    props = data.get("lake", {}).get("catalog_properties", {})
    if not isinstance(props, Mapping):
        raise ConfigurationError(
            f"lake.catalog_properties in {source} must be a table of strings",
            details={"setting": "lake.catalog_properties"},
        )
    return Config(
        log_level=values[""]["log_level"],
        router=RouterConfig(**values["router"]),
        shard=ShardConfig(**values["shard"]),
        lake=LakeConfig(**values["lake"], catalog_properties={k: str(v) for k, v in props.items()}),
        cdc=CDCConfig(**values["cdc"]),
        tokens=_tokens(data, env, source),
        vschema_data=vschema_data,
        vschema_path=vschema_path,
        source=Path(source) if base_dir else None,
    )


def load(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Load a deployment config file; raises ConfigurationError on any problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(
            f"config file {path} does not exist", code="MISSING_CONFIG", details={"path": str(path)}
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"{path} is not valid TOML: {exc}", details={"path": str(path)}
        ) from None
    return from_dict(data, env=env, source=str(path), base_dir=path.resolve().parent)


def default(*, env: Mapping[str, str] | None = None) -> Config:
    """Defaults plus environment overrides, no file."""
    return from_dict({}, env=env)
