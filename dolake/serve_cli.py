"""``dolake serve``: run the lake writer until interrupted."""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import trio

from dosql import config as config_mod
from dosql import logs
from dosql.ownership import OwnerLock


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

    # One lake writer per lake: a second one would commit the same changes again.
    owner = OwnerLock(Path(data_dir) / "lake" / "writer.lock", "lake writer").acquire()
    server = LakeServer(cfg, data_dir)
    tune_gc()
    host = args.host or cfg.lake.host
    port = cfg.lake.port if args.port is None else args.port
    try:
        trio.run(server.serve, host, port)
    finally:
        owner.release()
    return 0


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a process holding tens of
    thousands of buffered changes (each a few container objects) that are
    freed by reference counting, never by the collector.

    With the default thresholds (cdc_throughput benchmark) a full collection
    ran twice a second, each walking the whole heap -- pyiceberg, pyarrow and
    the buffers -- with the GIL held: ~19 % of a core in all, in pauses of up
    to 200 ms that stalled both the CDC sessions and the flush. Freezing the
    startup heap (modules, catalog, table metadata) takes it out of every
    later collection; a larger first threshold makes young collections, and
    so full ones, about ten times rarer: ~5 % of a core, pauses under 90 ms.
    """
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
