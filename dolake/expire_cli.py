"""``dolake expire``: ask a running lake writer to expire snapshots now."""

from __future__ import annotations

import argparse
import json
import os

from websockets.sync.client import connect

from dolake.flush_cli import lake_target
from dosql import protocol
from dosql.errors import RPCError


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
    url = url.replace("dolake://", "ws://").rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with connect(
            url + "/", additional_headers=headers, open_timeout=timeout, max_size=None
        ) as ws:
            ws.send(protocol.encode(protocol.Expire(id=1, dry_run=dry_run)))
            reply = protocol.decode(ws.recv(timeout=timeout))
    except (OSError, TimeoutError) as exc:
        raise RPCError(f"cannot reach the lake writer at {url}: {exc}") from None
    if isinstance(reply, protocol.Error):
        raise reply.to_exception()
    if not isinstance(reply, protocol.Ok):
        raise RPCError(f"unexpected reply {type(reply).__name__} from {url}")
    return reply.info


def run(args: argparse.Namespace) -> int:
    url, token = lake_target(args)
    info = expire(url, dry_run=args.dry_run, token=token, timeout=args.timeout)
    print(json.dumps(info, default=str))
    return 0
