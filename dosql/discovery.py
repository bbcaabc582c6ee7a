"""Where the CLI finds the cluster: flags, environment, or ``.dosql-data/cluster.toml``.

``dosql up`` writes ``<data dir>/cluster.toml`` with the router's and the lake
writer's addresses (``router.url``, ``lake.url``) and the tokens of the
config. So every command run beside a cluster's data directory reaches it
without ``--url``: the order is the command's flag, then its environment
variable (``DOSQL_URL`` / ``DOLAKE_URL``), then ``--config FILE`` when the
command has one, then ``./.dosql-data/cluster.toml`` (or the data directory
named by ``DOSQL_DATA_DIR``). A token from the file is its first admin token
(the operator running beside the data directory owns the cluster), else its
first token; ``--token`` and ``DOSQL_TOKEN`` come first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dosql.errors import ConfigurationError

DEFAULT_DATA_DIR = ".dosql-data"
CLUSTER_FILE = "cluster.toml"


@dataclass(frozen=True)
class Target:
    """An address to reach, the token to send, and where the address came from."""

    url: str
    token: str | None
    origin: str


def cluster_file(env: dict[str, str] | None = None) -> Path | None:
    """``$DOSQL_DATA_DIR/cluster.toml`` or ``./.dosql-data/cluster.toml``, if it exists."""
    env = dict(os.environ) if env is None else env
    path = Path(env.get("DOSQL_DATA_DIR") or DEFAULT_DATA_DIR) / CLUSTER_FILE
    return path if path.is_file() else None


def _from_config(path: Path, service: str) -> tuple[str, str | None]:
    from dosql import config as config_mod

    cfg = config_mod.load(path)
    url = cfg.router.url if service == "router" else cfg.lake.url
    admin = [t.token for t in cfg.tokens if t.scope == "admin"]
    token = admin[0] if admin else (cfg.tokens[0].token if cfg.tokens else None)
    return url, token


def resolve(
    service: str,
    *,
    url: str | None = None,
    token: str | None = None,
    config: str | None = None,
) -> Target:
    """The router's (``service="router"``) or lake writer's (``"lake"``) address and token.

    Raises ConfigurationError (code MISSING_CONFIG) naming every place it looked.
    """
    env_name = "DOSQL_URL" if service == "router" else "DOLAKE_URL"
    given, origin = (url, "--url") if url else (os.environ.get(env_name), env_name)
    if given:
        if token is None and config:
            token = _from_config(Path(config), service)[1]
        return Target(given, token, origin)
    candidates: list[tuple[Path, str]] = [(Path(config), "--config")] if config else []
    found = cluster_file()
    if found is not None:
        candidates.append((found, "the cluster's data directory"))
    for path, origin in candidates:
        found_url, found_token = _from_config(path, service)
        if found_url:
            return Target(found_url, token or found_token, f"{path} ({origin})")
    key = "router.url" if service == "router" else "lake.url"
    where = f"--config with {key}, " if config is not None else ""
    raise ConfigurationError(
        f"no {service} address: pass --url, set {env_name}, {where}or run beside the "
        f"cluster's data directory ({DEFAULT_DATA_DIR}/{CLUSTER_FILE}, written by `dosql up`; "
        "DOSQL_DATA_DIR names another)",
        code="MISSING_CONFIG",
    )
