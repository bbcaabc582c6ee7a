"""The shell's dot-commands, sqlite3-style: one function each, ``(shell, argument) -> status``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING

from dosql import exitcodes, tablelist
from dosql.shell import output

if TYPE_CHECKING:
    from dosql.shell.session import Shell

Command = Callable[["Shell", str], int]


class Quit(Exception):  # noqa: N818 - a request, not an error
    """``.quit``: end the session with ``status``."""

    def __init__(self, status: int = exitcodes.OK) -> None:
        super().__init__(status)
        self.status = status


def _help(shell: Shell, arg: str) -> int:
    width = max(len(usage) for usage, _ in COMMANDS.values())
    for usage, text in COMMANDS.values():
        shell.out.write(f"{usage.ljust(width)}  {text}\n")
    shell.out.write("SQL statements end with ';' and may span lines.\n")
    return exitcodes.OK


def _quit(shell: Shell, arg: str) -> int:
    raise Quit(exitcodes.OK)


def _tables(shell: Shell, arg: str) -> int:
    names = tablelist.table_names(shell.rows, shell.connect().url)
    for name in names:
        if not arg or fnmatch.fnmatch(name.lower(), arg.lower()):
            shell.out.write(name + "\n")
    return exitcodes.OK


def _schema(shell: Shell, arg: str) -> int:
    names = [arg] if arg else tablelist.table_names(shell.rows, shell.connect().url)
    found = False
    for name in names:
        for sql in tablelist.table_sql(shell.rows, name):
            shell.out.write(sql.rstrip(";") + ";\n")
            found = True
    if arg and not found:
        shell.err.write(f"error: no such table: {arg}\n")
        return exitcodes.SQL_ERROR
    return exitcodes.OK


def _explain(shell: Shell, arg: str) -> int:
    if not arg:
        return _usage(shell, "explain")
    return shell.run("EXPLAIN " + arg.rstrip().rstrip(";"))


def _mode(shell: Shell, arg: str) -> int:
    if not arg:
        shell.out.write(shell.mode + "\n")
        return exitcodes.OK
    if arg not in output.MODES:
        return _usage(shell, "mode")
    shell.mode = arg
    return exitcodes.OK


def _timer(shell: Shell, arg: str) -> int:
    if not arg:
        shell.out.write(("on" if shell.timer else "off") + "\n")
        return exitcodes.OK
    if arg not in ("on", "off"):
        return _usage(shell, "timer")
    shell.timer = arg == "on"
    return exitcodes.OK


def _usage(shell: Shell, name: str) -> int:
    shell.err.write(f"usage: {COMMANDS[name][0]}\n")
    return exitcodes.SQL_ERROR


# name -> (usage, help); the handlers are in HANDLERS
COMMANDS: dict[str, tuple[str, str]] = {
    "tables": (".tables [PATTERN]", "list tables (PATTERN: shell wildcards, e.g. user*)"),
    "schema": (".schema [TABLE]", "show CREATE statements"),
    "explain": (".explain SQL", "show the router's plan for a statement"),
    "mode": (".mode table|json|csv", "how results are printed"),
    "timer": (".timer on|off", "print each statement's time (to stderr)"),
    "help": (".help", "this list"),
    "quit": (".quit", "leave the shell (also .exit, Ctrl-D)"),
}
HANDLERS: dict[str, Command] = {
    "tables": _tables,
    "schema": _schema,
    "explain": _explain,
    "mode": _mode,
    "timer": _timer,
    "help": _help,
    "quit": _quit,
    "exit": _quit,
}


def run(shell: Shell, line: str) -> int:
    """Run ``.name argument``; an unknown command is an error (status 1)."""
    name, _, arg = line[1:].strip().partition(" ")
    handler = HANDLERS.get(name.lower())
    if handler is None:
        shell.err.write(f"error: unknown command .{name}: .help lists them\n")
        return exitcodes.SQL_ERROR
    return handler(shell, arg.strip())
