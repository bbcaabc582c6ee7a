"""One shell session: a connection, the output mode, and the statements and dot-commands fed to it.

Input arrives line by line (from the terminal, a file or a pipe). A line that
starts with ``.`` when no statement is pending is a dot-command
(:mod:`.commands`); anything else is SQL, run once its ``;`` arrives. A last
statement left without ``;`` at the end of the input is run too.

Failures (:mod:`dosql.exitcodes`): interactively an error is printed and the
shell goes on (reconnecting on the next statement when the connection was
lost, or after Ctrl-C interrupted a statement); from ``-c``, ``-f`` or a pipe
the first error stops the input and becomes the exit status, so scripts
never run on past a failed statement.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from dosql import driver, exitcodes
from dosql.discovery import Target
from dosql.shell import commands, output, script
from dosql.shell.commands import Quit

PROMPT = "dosql> "
CONTINUE = "   ...> "

ReadLine = Callable[[str], "str | None"]  # None at the end of the input


class Shell:
    """Runs statements and dot-commands on one (re)connectable session."""

    def __init__(
        self,
        target: Target,
        *,
        timeout: float = 30.0,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        mode: str = "table",
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.params = params
        self.mode = mode
        self.timer = False
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = False
        self._conn: driver.Connection | None = None

    # ------------------------------------------------------------------ connection

    def connect(self) -> driver.Connection:
        """The open connection, opened (again) when there is none; raises driver.Error."""
        if self._conn is None or self._conn.closed:
            self._conn = driver.connect(
                self.target.url, token=self.target.token, timeout=self.timeout, autocommit=True
            )
        return self._conn

    def drop(self) -> None:
        """Forget a connection that failed or was interrupted; the next statement reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self.drop()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one statement (for dot-commands); raises driver.Error."""
        return self.connect().cursor().execute(sql).fetchall()

    # ------------------------------------------------------------------ statements

    def run(self, sql: str) -> int:
        """Run one statement and print its result; returns its exit status."""
        params = self.params if self.params and script.has_placeholders(sql) else ()
        try:
            started = time.perf_counter()
            cur = self.connect().cursor().execute(sql, params)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if cur.description else []
            elapsed = time.perf_counter() - started
        except driver.Error as exc:
            return self.failed(exc)
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            self.drop()  # the reply may still be on its way: start afresh
            self.err.write("interrupted\n")
            return exitcodes.INTERRUPTED
        output.render(self.mode, columns, rows, cur.rowcount, cur.lastrowid, self.out)
        if self.timer:
            self.err.write(f"Time: {elapsed * 1000:.3f} ms\n")
        return exitcodes.OK

    def failed(self, exc: driver.Error) -> int:
        """Report an error; a lost connection is dropped so the next statement reconnects."""
        self.err.write(f"error: {exc}\n")
        status = exitcodes.for_error(exc)
        if status == exitcodes.CONNECTION_ERROR:
            self.drop()
        return status

    def command(self, line: str) -> int:
        """Run one dot-command; raises :class:`Quit` for ``.quit``."""
        try:
            return commands.run(self, line)
        except driver.Error as exc:
            return self.failed(exc)

    # ------------------------------------------------------------------ input

    def feed(self, read_line: ReadLine) -> int:
        """Run everything ``read_line`` yields; the exit status (see the module docstring)."""
        status = exitcodes.OK
        buffer = ""
        try:
            while True:
                try:
                    line = read_line(CONTINUE if buffer.strip() else PROMPT)
                    if line is None:
                        break
                    if not buffer.strip() and line.lstrip().startswith("."):
                        status = self.command(line.strip())
                    else:
                        buffer += line + "\n"
                        statements, buffer = script.split(buffer)
                        for statement in statements:
                            status = self.run(statement)
                            if status and not self.interactive:
                                break
                except KeyboardInterrupt:
                    if not self.interactive:
                        raise
                    # Ctrl-C at the prompt (or while a result prints) drops what is pending
                    self.err.write("\n")
                    buffer = ""
                    continue
                if status and not self.interactive:
                    return status
            if buffer.strip():
                status = self.run(buffer.strip())
        except Quit as quit_:
            return quit_.status
        return exitcodes.OK if self.interactive else status
