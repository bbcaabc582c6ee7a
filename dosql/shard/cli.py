"""``dosql shard`` / ``python -m dosql.shard``: run one shard server process."""

from __future__ import annotations

import argparse

import trio

from dosql import config as config_mod
from dosql import logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", required=True, help="shard id, e.g. shard-0")
    parser.add_argument("--db", required=True, help="path of the SQLite database file")
    parser.add_argument("--host", default=None, help="address to bind (default shard.host)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 picks a free one)")
    parser.add_argument("--config", default=None, help="deployment TOML config file")
    parser.add_argument(
        "--lake-url",
        default=None,
        help="lake writer ws:// URL: stream the change log there (default lake.url / DOLAKE_URL)",
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config) if args.config else config_mod.default()
    logs.setup("shard", cfg.log_level)
    from dosql.shard.server import serve

    return trio.run(
        lambda: serve(
            cfg,
            shard_id=args.id,
            db_path=args.db,
            host=args.host or cfg.shard.host,
            port=args.port,
            lake_url=args.lake_url or cfg.lake.url or None,
        )
    )
