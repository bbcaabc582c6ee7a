"""``dolake compact``: ask a running lake writer to compact small files now."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dolake import progress
from dolake.flush_cli import lake_target, request
from dosql import protocol


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="lake writer address (default: $DOLAKE_URL, or lake.url of --config)"
    )
    parser.add_argument("--config", help="deployment TOML file (for lake.url and the token)")
    parser.add_argument("--table", help="compact only this source table (mirror and change log)")
    parser.add_argument(
        "--dry-run", action="store_true", help="only report the files that would be rewritten"
    )
    parser.add_argument("--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")


def compact(
    url: str,
    *,
    table: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    timeout: float = 600.0,
) -> dict:
    """Send one Compact request; returns the Ok info or raises the lake's error."""
    return request(url, protocol.Compact(id=1, table=table, dry_run=dry_run), token, timeout)


def report(info: dict) -> None:
    """One line per Iceberg table on stderr, for the operator (stdout keeps the JSON)."""
    verb = "would rewrite" if info.get("dry_run") else "rewrote"
    for name, sides in sorted(info.get("tables", {}).items()):
        for side, r in sorted(sides.items()):
            ident = name if side == "mirror" else f"{name}__changelog"
            if info.get("dry_run"):
                data, deletes = (
                    r.get("data_files_to_rewrite", 0),
                    r.get("delete_files_to_rewrite", 0),
                )
            else:
                data, deletes = r.get("data_files_rewritten", 0), r.get("delete_files_rewritten", 0)
            print(
                f"{ident}: {verb} {data} data + {deletes} delete files"
                f" in {len(r.get('partitions', []))} partition(s)"
                + ("" if info.get("dry_run") else f" into {r.get('data_files_written', 0)}"),
                file=sys.stderr,
            )


def run(args: argparse.Namespace) -> int:
    url, token = lake_target(args)
    info = progress.run(
        url,
        "compact",
        lambda: compact(
            url, table=args.table, dry_run=args.dry_run, token=token, timeout=args.timeout
        ),
    )
    report(info)
    print(json.dumps(info, default=str))
    return 0
