"""``dosql shell [--url U] [-c SQL] [-f FILE] [-p VALUE] [-v NAME=VALUE]``: the SQL shell.

Interactive when stdin is a terminal and neither ``-c`` nor ``-f`` is given:
readline editing and history (``~/.dosql_history``, or ``DOSQL_HISTORY``),
statements end with ``;`` and may span lines, dot-commands (``.help``).
Otherwise it runs ``-c`` statements and ``-f`` files in the order given, or
what arrives on stdin, and stops at the first error. ``-p`` values bind to
``?`` placeholders and ``-v NAME=VALUE`` to ``:NAME``, in every statement that
has placeholders; values that look like integers or decimals bind as
numbers, anything else as text. The router is found as for ``dosql sql``
(``--url``, ``DOSQL_URL``, ``.dosql-data/cluster.toml``); the session is in
autocommit mode (``BEGIN`` … ``COMMIT`` for a transaction). Exit statuses:
:mod:`dosql.exitcodes`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dosql import discovery, exitcodes
from dosql.shell import output
from dosql.shell.session import Shell

HISTORY = "~/.dosql_history"
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


class _Input(argparse.Action):
    """Collects -c and -f into one list, in command-line order."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        items = list(getattr(namespace, "inputs", None) or [])
        items.append((self.dest, values))
        namespace.inputs = items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="router address, e.g. dosql://127.0.0.1:7000 "
        "(default: env DOSQL_URL, else .dosql-data/cluster.toml)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("DOSQL_TOKEN"), help="bearer token (env DOSQL_TOKEN)"
    )
    parser.add_argument(
        "-c", "--command", dest="c", action=_Input, metavar="SQL", help="run SQL (repeatable)"
    )
    parser.add_argument(
        "-f", "--file", dest="f", action=_Input, metavar="FILE", help="run a file ('-': stdin)"
    )
    parser.add_argument(
        "-p", "--param", action="append", default=[], metavar="VALUE", help="bind to '?' (in order)"
    )
    parser.add_argument(
        "-v", "--var", action="append", default=[], metavar="NAME=VALUE", help="bind to ':NAME'"
    )
    parser.add_argument("--mode", choices=output.MODES, default="table", help="output mode")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="statement timeout in seconds (default 30)"
    )
    parser.set_defaults(inputs=[])


def value(text: str) -> int | float | str:
    """A parameter from the command line: a number when it looks like one, else text."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def parameters(args: argparse.Namespace) -> list[Any] | dict[str, Any] | None:
    """``-p`` values as a sequence or ``-v`` values as a mapping (not both)."""
    if args.param and args.var:
        raise _Usage("use -p (for ?) or -v (for :name), not both")
    if args.var:
        named: dict[str, Any] = {}
        for item in args.var:
            name, eq, text = item.partition("=")
            if not eq or not name:
                raise _Usage(f"-v wants NAME=VALUE, not {item!r}")
            named[name.lstrip(":")] = value(text)
        return named
    return [value(p) for p in args.param] or None


class _Usage(Exception):
    pass


def _lines(stream: Any) -> Callable[[str], str | None]:
    it: Iterator[str] = iter(stream)

    def read(prompt: str) -> str | None:
        line = next(it, None)
        return None if line is None else line.rstrip("\n")

    return read


def _interactive_reader() -> Callable[[str], str | None]:
    """``input()`` with readline history in ~/.dosql_history (saved at exit)."""
    try:
        import readline
    except ImportError:  # not on every platform; the shell works without it
        readline = None  # type: ignore[assignment]
    if readline is not None:
        history = Path(os.environ.get("DOSQL_HISTORY") or HISTORY).expanduser()
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_history_length(10_000)
        import atexit

        def save() -> None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass

        atexit.register(save)

    def read(prompt: str) -> str | None:
        try:
            return input(prompt)
        except EOFError:
            sys.stdout.write("\n")
            return None

    return read


def run(args: argparse.Namespace) -> int:
    exitcodes.interruptible()
    try:
        params = parameters(args)
    except _Usage as exc:
        print(f"dosql shell: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE_ERROR
    target = discovery.resolve("router", url=args.url, token=args.token)
    shell = Shell(target, timeout=args.timeout, params=params, mode=args.mode)
    from dosql import driver

    try:
        shell.connect()
    except driver.Error as exc:
        origin = "" if target.origin == "--url" else f" (address from {target.origin})"
        print(f"dosql shell: error: {exc}{origin}", file=sys.stderr)
        return exitcodes.for_error(exc, connecting=True)
    try:
        if args.inputs:
            return _run_inputs(shell, args.inputs)
        if sys.stdin.isatty():
            from dosql.cli import version

            shell.interactive = True
            print(f"dosql shell {version()}, connected to {target.url}; .help for help")
            return shell.feed(_interactive_reader())
        return shell.feed(_lines(sys.stdin))
    finally:
        shell.close()


def _run_inputs(shell: Shell, inputs: list[tuple[str, str]]) -> int:
    for kind, text in inputs:
        if kind == "c":  # a last statement needs no ';' (feed runs what is left at the end)
            status = shell.feed(_lines(text.splitlines()))
        elif text == "-":
            status = shell.feed(_lines(sys.stdin))
        else:
            try:
                with open(text, encoding="utf-8") as f:
                    status = shell.feed(_lines(f))
            except OSError as exc:
                print(f"dosql shell: error: cannot read {text}: {exc.strerror}", file=sys.stderr)
                return exitcodes.SQL_ERROR
        if status:
            return status
    return exitcodes.OK
