"""``dosql router --config FILE [--host H] [--port P]``: run the query router."""

from __future__ import annotations

import argparse

import trio

from dosql import config as config_mod
from dosql import logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="deployment TOML (with the VSchema)")
    parser.add_argument("--host", default=None, help="listen address (default router.host)")
    parser.add_argument("--port", type=int, default=None, help="listen port (0: any free port)")


def run(args: argparse.Namespace) -> int:
    from dosql.router.server import main

    cfg = config_mod.load(args.config)
    logs.setup("router", cfg.log_level)
    host = args.host or cfg.router.host
    port = cfg.router.port if args.port is None else args.port
    trio.run(main, cfg, host, port)
    return 0
