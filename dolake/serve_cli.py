"""``dolake serve``: run the lake writer until interrupted."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import trio

from dosql import config as config_mod
from dosql import logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="deployment TOML file (defaults + environment if absent)")
    parser.add_argument("--host", help="interface to bind (default: lake.host)")
    parser.add_argument("--port", type=int, help="port to bind, 0 = any (default: lake.port)")
    parser.add_argument(
        "--data-dir",
        help="directory for the default catalog and warehouse (<data-dir>/lake/...); "
        "default: the config file's directory, or the current directory",
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config) if args.config else config_mod.default()
    logs.setup("lake", cfg.log_level)
    data_dir = args.data_dir or (
        str(Path(args.config).resolve().parent) if args.config else os.getcwd()
    )
    from dolake.server import LakeServer

    server = LakeServer(cfg, data_dir)
    host = args.host or cfg.lake.host
    port = cfg.lake.port if args.port is None else args.port
    trio.run(server.serve, host, port)
    return 0
