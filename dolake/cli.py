"""``dolake`` command line (see dosql.cli for the conventions)."""

from __future__ import annotations

import sys

from dosql.cli import dispatch

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("dolake.serve_cli", "run the lake writer (CDC ingest, Iceberg commits, subscribers)"),
    "flush": ("dolake.flush_cli", "ask a running lake writer to flush its buffers"),
    "expire": (
        "dolake.expire_cli",
        "ask a running lake writer to expire snapshots outside the retention window",
    ),
    "compact": ("dolake.compact_cli", "ask a running lake writer to compact small files now"),
    "clean-orphans": (
        "dolake.orphans_cli",
        "ask a running lake writer to delete files no snapshot references",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(SUBCOMMANDS, "dolake", argv)


if __name__ == "__main__":
    sys.exit(main())
