"""``dolake expire``: ask a running lake writer to expire snapshots now."""

from __future__ import annotations

import argparse
import json
import os

from dolake import progress
from dolake.flush_cli import lake_target, request
from dosql import protocol


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="lake writer address (default: $DOLAKE_URL, or lake.url of --config)"
    )
    parser.add_argument("--config", help="deployment TOML file (for lake.url and the token)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only report the snapshots and files that would be removed",
    )
    parser.add_argument("--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")


def expire(
    url: str, *, dry_run: bool = False, token: str | None = None, timeout: float = 600.0
) -> dict:
    """Send one Expire request; returns the Ok info or raises the lake's error."""
    return request(url, protocol.Expire(id=1, dry_run=dry_run), token, timeout)


def run(args: argparse.Namespace) -> int:
    url, token = lake_target(args)
    info = progress.run(
        url,
        "expire",
        lambda: expire(url, dry_run=args.dry_run, token=token, timeout=args.timeout),
    )
    print(json.dumps(info, default=str))
    return 0
