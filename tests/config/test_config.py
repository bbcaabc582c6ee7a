"""dosql.config: the guide's defaults, env overrides, bad values, TOML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dosql import config
from dosql.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]

# Defaults from the reference operations guide (003_..., "Environment variables").
GUIDE_DEFAULTS: dict[str, Any] = {
    "LOG_LEVEL": "info",
    "DOSQL_QUERY_TIMEOUT_MS": 30000,
    "DOSQL_WAL_SEGMENT_SIZE": 10485760,
    "DOLAKE_FLUSH_INTERVAL_MS": 60000,
    "DOLAKE_MAX_BUFFER_SIZE": 67108864,
    "DOLAKE_EVENT_THRESHOLD": 10000,
    "DOLAKE_PARQUET_ROW_GROUP_SIZE": 100000,
    "CDC_BATCH_SIZE": 100,
    "CDC_BATCH_TIMEOUT_MS": 5000,
    "CDC_MAX_RETRY_COUNT": 5,
    "CDC_RETRY_DELAY_MS": 1000,
    "SHARD_COUNT": 16,
    "SHARD_TIMEOUT_MS": 10000,
    "MAX_PARALLEL_SHARDS": 8,
}


def value_of(cfg: config.Config, setting: config.Setting) -> Any:
    holder = getattr(cfg, setting.section) if setting.section else cfg
    return getattr(holder, setting.key)


def settings_for(env_name: str) -> list[config.Setting]:
    return [s for s in config.SETTINGS if s.env == env_name]


def test_defaults_equal_the_guide() -> None:
    cfg = config.default(env={})
    for env_name, expected in GUIDE_DEFAULTS.items():
        found = settings_for(env_name)
        assert found, f"no setting reads {env_name}"
        for setting in found:
            assert value_of(cfg, setting) == expected, setting.name
    assert cfg.tokens == ()
    assert cfg.vschema_data is None and cfg.vschema_path is None


def _other_value(setting: config.Setting) -> tuple[str, Any]:
    """A valid, non-default raw env value and what it parses to."""
    if setting.kind == "int":
        value = max(setting.default, setting.minimum or 0) + 7
        return str(value), value
    if setting.kind == "choice":
        choice = next(c for c in setting.choices if c.lower() != str(setting.default).lower())
        return choice.upper(), choice
    if setting.kind == "bool":
        return ("off" if setting.default else "on"), not setting.default
    return "from-env", "from-env"


@pytest.mark.parametrize("setting", [s for s in config.SETTINGS if s.env], ids=lambda s: s.name)
def test_each_env_var_overrides_file_and_default(setting: config.Setting) -> None:
    raw, expected = _other_value(setting)
    file_data: dict[str, Any] = {}
    if setting.kind == "int":
        section = file_data.setdefault(setting.section, {}) if setting.section else file_data
        section[setting.key] = max(setting.default, setting.minimum or 0) + 3
    cfg = config.from_dict(file_data, env={setting.env: raw})
    assert value_of(cfg, setting) == expected


def test_file_value_used_without_env() -> None:
    cfg = config.from_dict(
        {"lake": {"flush_interval_ms": 1234}, "cdc": {"batch_size": 7}, "log_level": "DEBUG"},
        env={},
    )
    assert cfg.lake.flush_interval_ms == 1234
    assert cfg.cdc.batch_size == 7
    assert cfg.log_level == "debug"
    assert (
        config.from_dict({"shard": {"wal_segment_size": "2_048"}}, env={}).shard.wal_segment_size
        == 2048
    )


@pytest.mark.parametrize(
    ("env", "data", "needles"),
    [
        ({"CDC_BATCH_SIZE": "lots"}, {}, ["cdc.batch_size", "CDC_BATCH_SIZE", "integer"]),
        ({"SHARD_COUNT": "0"}, {}, ["shard.shard_count", "SHARD_COUNT", ">= 1"]),
        ({"DOSQL_WAL_SEGMENT_SIZE": "10"}, {}, ["wal_segment_size", ">= 1024"]),
        ({"LOG_LEVEL": "loud"}, {}, ["log_level", "LOG_LEVEL", "debug"]),
        ({"MAX_PARALLEL_SHARDS": "1.5"}, {}, ["max_parallel_shards", "integer"]),
        ({}, {"router": {"max_parallel_shards": "eight"}}, ["router.max_parallel_shards"]),
        ({}, {"lake": {"event_threshold": True}}, ["lake.event_threshold", "integer"]),
        ({}, {"lake": {"event_threshold": 0}}, ["lake.event_threshold", ">= 1"]),
        ({}, {"shard": {"synchronous": "OFF"}}, ["shard.synchronous", "NORMAL"]),
        ({}, {"router": {"host": 5}}, ["router.host", "string"]),
        ({}, {"lgo_level": "info"}, ["lgo_level"]),
        ({}, {"lake": {"flush_intervl_ms": 5}}, ["lake.flush_intervl_ms"]),
        ({}, {"router": "fast"}, ["router"]),
        ({}, {"vschema": 3}, ["vschema"]),
        ({}, {"lake": {"catalog_properties": 3}}, ["lake.catalog_properties"]),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], data: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        config.from_dict(data, env=env)
    assert info.value.code == "INVALID_CONFIG"
    for needle in needles:
        assert needle in info.value.message, (needle, info.value.message)


@pytest.mark.parametrize(
    ("env", "data"),
    [
        ({}, {"auth": {"tokens": [{"token": "", "scope": "admin"}]}}),
        ({}, {"auth": {"tokens": [{"token": "s3cret", "scope": "root"}]}}),
        ({}, {"auth": {"tokens": ["s3cret"]}}),
        ({}, {"auth": {"tokens": [{"scope": "read"}]}}),
        ({}, {"auth": {"tokens": 5}}),
        ({}, {"auth": "s3cret"}),
        ({"DOSQL_TOKENS": "abc:superuser"}, {}),
        ({"DOSQL_TOKENS": ":read"}, {}),
    ],
)
def test_bad_token_entries(env: dict[str, str], data: dict) -> None:
    with pytest.raises(ConfigurationError) as info:
        config.from_dict(data, env=env)
    assert "auth.tokens" in info.value.message
    assert info.value.details["setting"] == "auth.tokens"


def test_tokens_from_file_and_env() -> None:
    cfg = config.from_dict(
        {"auth": {"tokens": [{"token": "r", "scope": "read"}, {"token": "a"}]}}, env={}
    )
    assert cfg.tokens == (config.Token("r", "read"), config.Token("a", "admin"))
    cfg = config.from_dict(
        {"auth": {"tokens": [{"token": "file"}]}}, env={"DOSQL_TOKENS": "x:read, y:admin,z"}
    )
    assert [(t.token, t.scope) for t in cfg.tokens] == [
        ("x", "read"),
        ("y", "admin"),
        ("z", "admin"),
    ]


def test_load_toml_file_with_vschema_path(tmp_path: Path) -> None:
    (tmp_path / "vs.toml").write_text('shard_count = 2\n[tables.t]\ncolumn = "id"\n')
    path = tmp_path / "dosql.toml"
    path.write_text(
        'log_level = "warn"\nvschema = "vs.toml"\n'
        "[lake]\nflush_interval_ms = 2500\n[lake.catalog_properties]\n"
        '"s3.endpoint" = "http://127.0.0.1:9000"\n'
    )
    cfg = config.load(path, env={"CDC_BATCH_SIZE": "9"})
    assert cfg.log_level == "warn"
    assert cfg.lake.flush_interval_ms == 2500
    assert cfg.lake.catalog_properties == {"s3.endpoint": "http://127.0.0.1:9000"}
    assert cfg.cdc.batch_size == 9
    assert cfg.vschema_path == tmp_path.resolve() / "vs.toml"
    assert cfg.load_vschema().shard_ids == ("shard-0", "shard-1")


def test_inline_vschema(tmp_path: Path) -> None:
    path = tmp_path / "dosql.toml"
    path.write_text('[vschema]\nshard_count = 3\n[vschema.tables.users]\ncolumn = "tenant_id"\n')
    vs = config.load(path, env={}).load_vschema()
    assert len(vs.shards) == 3 and vs.table("users").column == "tenant_id"


def test_missing_vschema_is_reported() -> None:
    with pytest.raises(ConfigurationError) as info:
        config.default(env={}).load_vschema()
    assert info.value.code == "MISSING_CONFIG" and "vschema" in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        config.load(tmp_path / "absent.toml", env={})
    assert info.value.code == "MISSING_CONFIG"
    assert "absent.toml" in info.value.message


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[lake\nflush_interval_ms = 1\n")
    with pytest.raises(ConfigurationError) as info:
        config.load(path, env={})
    assert info.value.code == "INVALID_CONFIG"
    assert str(path) in info.value.message


def test_bad_value_in_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "dosql.toml"
    path.write_text("[cdc]\nbatch_size = -1\n")
    with pytest.raises(ConfigurationError) as info:
        config.load(path, env={})
    assert "cdc.batch_size" in info.value.message and str(path) in info.value.message


def test_quickstart_config() -> None:
    cfg = config.load(ROOT / "examples" / "quickstart" / "dosql.toml", env={})
    assert cfg.log_level == "info"
    assert cfg.lake.flush_interval_ms == 5000
    assert cfg.lake.event_threshold == 1000
    vs = cfg.load_vschema()
    assert vs.shard_ids == ("shard-0", "shard-1", "shard-2", "shard-3")
    assert vs.shard_for("users", 42) == vs.shard_for("users", "42")
    overridden = config.load(
        ROOT / "examples" / "quickstart" / "dosql.toml", env={"DOLAKE_FLUSH_INTERVAL_MS": "100"}
    )
    assert overridden.lake.flush_interval_ms == 100
