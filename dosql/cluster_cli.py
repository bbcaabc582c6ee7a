"""``dosql up --config FILE --data-dir DIR``: a local cluster in the foreground.

Starts the lake writer (when available), one shard per VSchema shard and the
router, prints the router URL and a one-line Python example, and runs until
Ctrl-C or SIGTERM, then stops everything in order (router, shards, lake).
An existing data directory is reused: shard databases persist between runs.

The cluster is supervised (:mod:`dosql.supervisor`): a child that dies
unexpectedly is logged on stderr (one JSON line with its exit status and the
tail of its log) and restarted at the same address with exponential backoff
(0.5 s doubling to 30 s; ``--no-supervise`` turns it off). ``dosql status``
shows the cluster and the supervisor's view (``<data dir>/supervisor.json``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="deployment TOML (with the VSchema)")
    parser.add_argument("--data-dir", default=".dosql-data", help="where shards keep their data")
    parser.add_argument("--no-lake", action="store_true", help="do not start the lake writer")
    parser.add_argument(
        "--no-supervise",
        action="store_true",
        help="do not restart a process that dies (default: restart with backoff)",
    )
    parser.add_argument(
        "--restart-backoff",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="first restart delay, doubled per crash in a row up to 30 s (default 0.5)",
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def run(args: argparse.Namespace) -> int:
    from dosql.cluster import LocalCluster
    from dosql.supervisor import Backoff

    previous = signal.signal(signal.SIGTERM, _raise_stop)
    cluster = None
    try:
        print(f"starting local cluster from {args.config} in {args.data_dir} ...", flush=True)
        cluster = LocalCluster(
            args.config,
            args.data_dir,
            lake=not args.no_lake,
            supervise=not args.no_supervise,
            backoff=Backoff(initial_s=args.restart_backoff),
        )
        print(f"router:  {cluster.url}")
        for sid, url in cluster.shard_urls.items():
            print(f"shard:   {sid} {url}")
        if cluster.lake_url:
            print(f"lake:    {cluster.lake_url}")
        print(f"logs:    {cluster.data_dir / 'logs'}")
        python = os.path.relpath(sys.executable) if sys.executable else "python"
        print(
            f"connect: {python} -c \"import dosql; c = dosql.connect('"
            + str(cluster.url)
            + "'); cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchall()); c.close()\""
        )
        if cluster.lake_url:
            print(f"changes: {python} -m dosql.cli tail --url {cluster.lake_url} --table TABLE")
        print(f"status:  {python} -m dosql.cli status --data-dir {args.data_dir}")
        print("press Ctrl-C to stop", flush=True)
        while cluster.supervisor is not None or cluster.router_alive:
            time.sleep(0.5)  # supervised: runs until Ctrl-C/SIGTERM, whatever dies
        print("the router exited; stopping the cluster (see its log)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        print("\nstopping ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if cluster is not None:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                cluster.stop()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        print("stopped", flush=True)
