"""``dosql`` command line: one entry point, one module per subcommand.

Each subcommand lives beside the code it drives and exposes
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires
them up, imports them lazily (so ``dosql changes`` does not pay for pyarrow),
and owns what every command shares: ``--version``, the exit statuses of
:mod:`dosql.exitcodes` (a project or driver error becomes a one-line message
and its status; a usage error exits 3, not argparse's 2), Ctrl-C (130, no
traceback) and a reader that closes the pipe (``dosql tail … | head``: 141,
no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from dosql import exitcodes
from dosql.errors import DoSQLError

# name -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "shard": ("dosql.shard.cli", "run one SQLite shard server process"),
    "changes": ("dosql.shard.changes_cli", "print a shard database's change log as JSON lines"),
    "router": ("dosql.router.cli", "run the query router"),
    "up": ("dosql.cluster_cli", "start a local cluster (router, shards, lake) in the foreground"),
    "status": ("dosql.status_cli", "show a cluster's processes, health, LSNs and restarts"),
    "sql": ("dosql.sql_cli", "run one SQL statement through a router and print the result"),
    "shell": ("dosql.shell_cli", "interactive SQL shell (also runs -c SQL, -f FILE, stdin)"),
    "vschema": ("vschema.cli", "validate a VSchema file and print its routing table"),
    "restore-table": ("dosql.restore", "materialise a table's past state into a new table"),
    "tail": ("dosql.tail_cli", "follow a table's change stream as JSON lines"),
}


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on exit status 3 (argparse's 2 is a connection error here)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE_ERROR, f"{self.prog}: error: {message}\n")


def version() -> str:
    """The installed package's version (as ``pip`` knows it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("dosql")
    except PackageNotFoundError:
        return "unknown"


def add_version(parser: argparse.ArgumentParser, prog: str) -> None:
    parser.add_argument(
        "--version", action="version", version=f"{prog} {version()}", help="print the version"
    )


def build_parser(subcommands: dict[str, tuple[str, str]], prog: str) -> argparse.ArgumentParser:
    parser = Parser(prog=prog)
    add_version(parser, prog)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in subcommands.items():
        subs.add_parser(name, help=help_text, add_help=False)
    return parser


def dispatch(subcommands: dict[str, tuple[str, str]], prog: str, argv: list[str] | None) -> int:
    try:
        return _dispatch(subcommands, prog, argv)
    except KeyboardInterrupt:  # Ctrl-C while importing or parsing, before run()
        print(file=sys.stderr)
        return exitcodes.INTERRUPTED


def _dispatch(subcommands: dict[str, tuple[str, str]], prog: str, argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(subcommands, prog)
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in subcommands:
        if argv and argv[0] == "--version":
            print(f"{prog} {version()}")
            return exitcodes.OK
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"{prog}: unknown command {argv[0]!r}", file=sys.stderr)
            return exitcodes.USAGE_ERROR
        parser.print_help()
        return exitcodes.OK
    name = argv[0]
    module_name, help_text = subcommands[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"{prog} {name}: not available in this build", file=sys.stderr)
            return exitcodes.USAGE_ERROR
        raise
    sub = Parser(prog=f"{prog} {name}", description=help_text)
    add_version(sub, prog)
    module.add_arguments(sub)
    try:
        args = sub.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except SystemExit as exc:  # argparse (--help, --version, usage errors) and sys.exit()
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or exitcodes.OK
        print(exc.code, file=sys.stderr)
        return exitcodes.USAGE_ERROR
    except DoSQLError as exc:
        print(f"{prog} {name}: error: {exc}", file=sys.stderr)
        return exitcodes.for_error(exc)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        return broken_pipe()
    except Exception as exc:
        from dosql import driver

        if isinstance(exc, driver.Error):
            print(f"{prog} {name}: error: {exc}", file=sys.stderr)
            return exitcodes.for_error(exc)
        raise


def broken_pipe() -> int:
    """The reader closed stdout: point it at /dev/null so the exit flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return exitcodes.BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    return dispatch(SUBCOMMANDS, "dosql", argv)


if __name__ == "__main__":
    sys.exit(main())
