"""``dosql tail --url ws://LAKE --table T [--from POSITION]``: follow changes as JSON lines.

Prints every event the subscribe endpoint sends (row changes in the Debezium
envelope, schema and commit events; heartbeats with ``--heartbeats``) as one
JSON line each, BLOBs as base64 as on the wire. Stop with Ctrl-C; the last
line's ``position`` resumes with ``--from``. Without ``--url`` (or
``DOLAKE_URL``) the lake writer is found from ``.dosql-data/cluster.toml``.
A reader that stops early (``| head``) ends it quietly (see :mod:`dosql.cli`).
``--format debezium [--changes-only] [--value-only]`` prints Debezium's records (or just
their values: one Debezium change event per line, what a ``debezium-json`` reader takes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from dosql import changefeed as sub_mod
from dosql import discovery, exitcodes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="lake writer (or subscribe server) address, ws://host:port "
        "(default: env DOLAKE_URL, else .dosql-data/cluster.toml)",
    )
    parser.add_argument(
        "--table",
        action="append",
        dest="tables",
        help="table to follow (repeat for several; default: every table)",
    )
    parser.add_argument(
        "--from",
        dest="start",
        default="latest",
        help='where to start: "latest" (default), "earliest", an ISO timestamp, or a position',
    )
    parser.add_argument("--snapshot", action="store_true", help="current rows first (op r)")
    parser.add_argument("--ops", help="only these operations, e.g. c,u,d")
    parser.add_argument("--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token")
    parser.add_argument("--heartbeats", action="store_true", help="print heartbeats too")
    parser.add_argument(
        "--format",
        choices=("dosql", "debezium"),
        default="dosql",
        help="dosql's events (default) or Debezium's records (topic, key, value, position)",
    )
    parser.add_argument(
        "--changes-only", action="store_true", help="row changes only (no schema/commit/...)"
    )
    parser.add_argument("--tombstones", action="store_true", help="debezium: after deletes")
    parser.add_argument(
        "--schemas", action="store_true", help="debezium: JsonConverter {schema, payload}"
    )
    parser.add_argument(
        "--value-only",
        action="store_true",
        help="debezium: print each record's value only (what a debezium-json reader takes; "
        "tombstones print nothing)",
    )
    parser.add_argument("--limit", type=int, help="exit after this many printed events")
    parser.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="exit once no change, schema or commit event arrived for this long",
    )


def _start(value: str) -> object:
    if value in ("latest", "earliest"):
        return value
    if value[:4].isdigit() and "-" in value[:8]:  # 2026-01-20T14:30:00Z
        return {"timestamp": value}
    return {"position": value}


def run(args: argparse.Namespace) -> int:
    exitcodes.interruptible()
    if args.snapshot and args.start != "latest":
        print("dosql tail: --snapshot starts at the snapshot; drop --from", file=sys.stderr)
        return exitcodes.USAGE_ERROR
    debezium_only = [
        f"--{o.replace('_', '-')}"
        for o in ("tombstones", "schemas", "value_only")
        if getattr(args, o)
    ]
    if debezium_only and args.format != "debezium":
        print(f"dosql tail: {', '.join(debezium_only)} needs --format debezium", file=sys.stderr)
        return exitcodes.USAGE_ERROR
    target = discovery.resolve("lake", url=args.url, token=args.token)
    message = sub_mod.request(
        args.tables or "*",
        "latest",
        snapshot=args.snapshot,
        ops=args.ops.split(",") if args.ops else None,
        format=args.format if args.format != "dosql" else None,
        changes_only=args.changes_only or None,
        tombstones=args.tombstones or None,
        schemas=args.schemas or None,
    )
    if not args.snapshot:
        message["start"] = _start(args.start)
    printed = 0
    last = time.monotonic()
    with sub_mod.Subscription(
        target.url,
        message,
        token=target.token,
        decode_binary=False,
        heartbeats=True,
        timeout=args.idle_exit,
    ) as subscription:
        try:
            for event in subscription:
                heartbeat = event.get("type") == "heartbeat" or str(event.get("topic")).startswith(
                    "__debezium-heartbeat."
                )
                if not heartbeat:
                    last = time.monotonic()
                elif args.idle_exit is not None and time.monotonic() - last >= args.idle_exit:
                    break
                if heartbeat and not args.heartbeats:
                    continue
                if args.value_only:
                    event = event.get("value")
                    if event is None:  # a tombstone: a null Kafka record, nothing to print
                        continue
                sys.stdout.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
                sys.stdout.write("\n")
                sys.stdout.flush()
                printed += 1
                if args.limit is not None and printed >= args.limit:
                    break
        except TimeoutError:  # --idle-exit and not even a heartbeat
            pass
    return 0
