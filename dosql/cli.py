"""``dosql`` command line: one entry point, one module per subcommand.

Each subcommand lives beside the code it drives and exposes
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires
them up, imports them lazily (so ``dosql changes`` does not pay for pyarrow),
and turns project errors into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dosql.errors import DoSQLError

# name -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "shard": ("dosql.shard.cli", "run one SQLite shard server process"),
    "changes": ("dosql.shard.changes_cli", "print a shard database's change log as JSON lines"),
    "router": ("dosql.router.cli", "run the query router"),
    "up": ("dosql.cluster_cli", "start a local cluster (router, shards, lake) in the foreground"),
    "sql": ("dosql.sql_cli", "run one SQL statement through a router and print the result"),
    "vschema": ("vschema.cli", "validate a VSchema file and print its routing table"),
    "restore-table": ("dosql.restore", "materialise a table's past state into a new table"),
    "tail": ("dosql.tail_cli", "follow a table's change stream as JSON lines"),
}


def build_parser(subcommands: dict[str, tuple[str, str]], prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in subcommands.items():
        subs.add_parser(name, help=help_text, add_help=False)
    return parser


def dispatch(subcommands: dict[str, tuple[str, str]], prog: str, argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(subcommands, prog)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in subcommands:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"{prog}: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_text = subcommands[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"{prog} {name}: not available in this build", file=sys.stderr)
            return 2
        raise
    sub = argparse.ArgumentParser(prog=f"{prog} {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except DoSQLError as exc:
        print(f"{prog} {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    return dispatch(SUBCOMMANDS, "dosql", argv)


if __name__ == "__main__":
    sys.exit(main())
