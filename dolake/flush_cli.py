"""``dolake flush``: ask a running lake writer to commit its buffers."""

from __future__ import annotations

import argparse
import json
import os
import time

from websockets.sync.client import connect

from dosql import protocol
from dosql.errors import RPCError, TimeoutError_


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="lake writer address (default: $DOLAKE_URL, lake.url of --config, "
        "else .dosql-data/cluster.toml)",
    )
    parser.add_argument("--config", help="deployment TOML file (for lake.url and the token)")
    parser.add_argument("--table", help="flush only this source table")
    parser.add_argument(
        "--wait", action="store_true", help="return once the flushed changes are committed"
    )
    parser.add_argument("--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")


def flush(
    url: str,
    *,
    table: str | None = None,
    wait: bool = True,
    token: str | None = None,
    timeout: float = 300.0,
) -> dict:
    """Send one Flush request; returns the Ok info or raises the lake's error."""
    return request(url, protocol.Flush(id=1, table=table, wait=wait), token, timeout)


def request(url: str, message: protocol.Message, token: str | None, timeout: float) -> dict:
    """One admin request on the lake writer's control WebSocket: the Ok info, or its error."""
    url = url.replace("dolake://", "ws://").rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with connect(
            url + "/", additional_headers=headers, open_timeout=timeout, max_size=None
        ) as ws:
            ws.send(protocol.encode(message))
            reply = protocol.decode(ws.recv(timeout=timeout))
    except (OSError, TimeoutError) as exc:
        raise RPCError(f"cannot reach the lake writer at {url}: {exc}") from None
    if isinstance(reply, protocol.Error):
        raise reply.to_exception()
    if not isinstance(reply, protocol.Ok):
        raise RPCError(f"unexpected reply {type(reply).__name__} from {url}")
    return reply.info


def status(url: str, timeout: float = 10.0, path: str = "/status") -> dict:
    """The lake writer's /status JSON (or another of its GET paths)."""
    import urllib.request

    http_url = url.replace("dolake://", "http://").replace("ws://", "http://")
    http_url = http_url.replace("wss://", "https://").rstrip("/") + path
    try:
        with urllib.request.urlopen(http_url, timeout=timeout) as reply:
            return json.loads(reply.read())
    except OSError as exc:
        raise RPCError(f"cannot reach the lake writer at {http_url}: {exc}") from None


def flush_through(
    url: str,
    targets: dict[str, int],
    *,
    table: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> dict:
    """Wait until the lake has received every change up to ``targets[shard]``
    (e.g. each shard's ``LsnInfo.current_lsn``), then flush and wait: on return
    everything those shards had committed is in Iceberg."""
    deadline = time.monotonic() + timeout
    while True:
        sources = status(url).get("sources", {})
        behind = {
            s: (sources.get(s, {}).get("received_lsn", 0), lsn)
            for s, lsn in targets.items()
            if sources.get(s, {}).get("received_lsn", 0) < lsn
        }
        if not behind:
            break
        if time.monotonic() > deadline:
            raise TimeoutError_(
                f"the lake writer has not received the changes to flush after {timeout}s "
                f"(shard: (received, wanted)) {behind}: are the shards streaming to it?",
                code="LAKE_BEHIND",
                details={"behind": {k: list(v) for k, v in behind.items()}},
            )
        time.sleep(0.05)
    return flush(url, table=table, wait=True, token=token, timeout=timeout)


def lake_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The lake writer's URL and an admin token: --url/--token, DOLAKE_URL, --config,
    or the cluster's ``.dosql-data/cluster.toml`` (:func:`dosql.discovery.resolve`)."""
    from dosql import discovery

    target = discovery.resolve("lake", url=args.url, token=args.token, config=args.config)
    return target.url, target.token


def run(args: argparse.Namespace) -> int:
    url, token = lake_target(args)
    info = flush(url, table=args.table, wait=args.wait, token=token, timeout=args.timeout)
    print(json.dumps(info, default=str))
    return 1 if info.get("errors") else 0
