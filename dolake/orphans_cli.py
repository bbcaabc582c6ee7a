"""``dolake clean-orphans``: ask a running lake writer to delete unreferenced files."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from dolake import progress
from dolake.flush_cli import lake_target, request
from dosql import protocol
from dosql.errors import ValidationError

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """``"500ms"``, ``"30s"``, ``"10m"``, ``"1h"``, ``"7d"`` or plain milliseconds."""
    match = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise ValidationError(
            f"--older-than {text!r}: give a duration such as 30s, 10m, 1h, 7d (or milliseconds)",
            code="INVALID_INPUT",
        )
    return int(match.group(1)) * _UNITS_MS[match.group(2) or "ms"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="lake writer address (default: $DOLAKE_URL, or lake.url of --config)"
    )
    parser.add_argument("--config", help="deployment TOML file (for lake.url and the token)")
    parser.add_argument(
        "--dry-run", action="store_true", help="only list the files that would be deleted"
    )
    parser.add_argument(
        "--older-than",
        help="safety window: only files older than this (e.g. 1h; default lake.orphan_min_age_ms)",
    )
    parser.add_argument("--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")


def clean_orphans(
    url: str,
    *,
    dry_run: bool = False,
    older_than_ms: int | None = None,
    token: str | None = None,
    timeout: float = 600.0,
) -> dict:
    """Send one CleanOrphans request; returns the Ok info or raises the lake's error."""
    msg = protocol.CleanOrphans(id=1, dry_run=dry_run, older_than_ms=older_than_ms)
    return request(url, msg, token, timeout)


def run(args: argparse.Namespace) -> int:
    url, token = lake_target(args)
    older = duration_ms(args.older_than) if args.older_than else None
    info = progress.run(
        url,
        "clean-orphans",
        lambda: clean_orphans(
            url, dry_run=args.dry_run, older_than_ms=older, token=token, timeout=args.timeout
        ),
    )
    verb = "would delete" if info.get("dry_run") else "deleted"
    for name, sides in sorted(info.get("tables", {}).items()):
        for side, r in sorted(sides.items()):
            ident = name if side == "mirror" else f"{name}__changelog"
            n = r["orphans"] if info.get("dry_run") else r["files_deleted"]
            print(f"{ident}: {verb} {n} orphan file(s)", file=sys.stderr)
    print(json.dumps(info, default=str))
    return 0
