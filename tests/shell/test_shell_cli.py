"""``dosql shell`` and the CLI's shared behaviour, as subprocesses against a real cluster.

The cluster's data directory is ``<tmp>/.dosql-data`` and the commands run
with ``<tmp>`` as their working directory and no DOSQL_URL/DOLAKE_URL, so
every command here finds the cluster from ``.dosql-data/cluster.toml``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.router.conftest import quickstart_vschema, write_config

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory with a running cluster (lake included) in its ``.dosql-data``.

    The router tests' VSchema: ``system_config`` is unsharded on shard-3, not
    on the default shard.
    """
    from dosql.cluster import LocalCluster

    root = tmp_path_factory.mktemp("shell")
    config = write_config(root / "dosql.toml", quickstart_vschema())
    with LocalCluster(config, root / ".dosql-data") as cluster:
        assert cluster.lake_url
        yield root


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DOSQL_URL", "DOLAKE_URL")}
    env.pop("DOSQL_TOKEN", None)
    env.pop("DOSQL_DATA_DIR", None)
    env["HOME"] = str(home)
    return env


def cli(
    cwd: Path, *args: str, prog: str = "dosql", stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), *args],
        cwd=cwd,
        env=_env(cwd),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version_on_every_entry_point(here: Path) -> None:
    for prog, args in [
        ("dosql", ["--version"]),
        ("dolake", ["--version"]),
        ("dosql", ["shell", "--version"]),
        ("dosql", ["sql", "--version"]),
        ("dosql", ["tail", "--version"]),
        ("dolake", ["flush", "--version"]),
    ]:
        done = cli(here, *args, prog=prog)
        assert done.returncode == 0, (prog, args, done.stderr)
        assert done.stdout.split()[0] == prog and done.stdout.split()[1][0].isdigit()


def test_c_runs_statements_and_ddl_prints_ok(here: Path) -> None:
    done = cli(
        here,
        "shell",
        "-c",
        "CREATE TABLE people (id INTEGER PRIMARY KEY, tenant_id INTEGER, name TEXT); "
        "INSERT INTO people VALUES (1, 1, 'ada'), (2, 2, 'bob'), (3, 1, 'cy');",
        "-c",
        "SELECT id, name FROM people ORDER BY id",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["OK", "OK (3 rows affected)"]
    assert lines[2:] == ["id | name", "---+-----", " 1 | ada", " 2 | bob", " 3 | cy", "(3 rows)"]
    ddl = cli(here, "sql", "CREATE INDEX ix_people_name ON people (name)")  # dosql sql too
    assert (ddl.returncode, ddl.stdout) == (0, "OK\n"), ddl.stderr


def test_file_with_multiline_statements_comments_and_dot_commands(here: Path) -> None:
    script = here / "script.sql"
    script.write_text(
        "-- a file as an operator writes it\n"
        "CREATE TABLE notes (\n  id INTEGER PRIMARY KEY,\n  body TEXT\n);\n"
        "INSERT INTO notes VALUES (1, 'semi;colon'), (2, 'it''s');\n"
        ".mode json\n"
        "SELECT body FROM notes\n  WHERE id IN (1, 2)\n  ORDER BY id;\n"
        ".mode csv\n"
        "SELECT id, body FROM notes ORDER BY id; /* trailing */\n"
        ".mode\n",
        encoding="utf-8",
    )
    done = cli(here, "shell", "-f", str(script))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["OK", "OK (2 rows affected)"]
    assert json.loads(lines[2])["rows"] == [["semi;colon"], ["it's"]]
    assert lines[3:] == ["id,body", "1,semi;colon", "2,it's", "csv"]


def test_stdin_and_parameters(here: Path) -> None:
    done = cli(
        here,
        "shell",
        "-p",
        "2",
        "-p",
        "bob",
        "--mode",
        "json",
        stdin="SELECT count(*) FROM people;\nSELECT name FROM people WHERE id = ? AND name = ?;\n",
    )
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["rows"] == [[3]] and second["rows"] == [["bob"]]
    named = cli(here, "shell", "-v", "t=1", "-c", "SELECT name FROM people WHERE tenant_id = :t")
    assert named.returncode == 0, named.stderr
    assert named.stdout.splitlines()[2:4] == ["ada", "cy"]


def test_dot_commands(here: Path) -> None:
    cli(here, "sql", "CREATE TABLE system_config (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    done = cli(
        here,
        "shell",
        stdin=".help\n.tables\n.tables peo*\n.schema people\n.schema system_config\n"
        ".timer on\nSELECT 1 AS one;\n.timer off\n.explain SELECT name FROM people WHERE id = 1\n"
        ".quit\nSELECT 'not reached';\n",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert ".schema [TABLE]" in out and ".mode table|json|csv" in out
    listing = out.split("may span lines.\n")[1].split("CREATE TABLE")[0].splitlines()
    # every user table (system_config is not on the default shard), nothing internal
    assert listing == ["notes", "people", "system_config", "people"]
    assert "CREATE TABLE people (id INTEGER PRIMARY KEY, tenant_id INTEGER, name TEXT);" in out
    assert "CREATE INDEX ix_people_name ON people (name);" in out
    assert "_dosql_trg" not in out  # the shards' change-capture triggers stay hidden
    # system_config lives on shard-3, not the default shard: rebuilt from PRAGMA table_info
    assert 'CREATE TABLE "system_config" ("k" TEXT, "v" TEXT NOT NULL, PRIMARY KEY ("k"));' in out
    assert "Time: " in done.stderr
    assert "Route" in out and "single_shard" in out  # the router's plan
    assert "not reached" not in out


def test_exit_status_for_each_failure_class(here: Path, tmp_path: Path) -> None:
    sql_error = cli(here, "shell", "-c", "SELECT 1 AS a; SELECT * FROM nowhere; SELECT 2 AS b")
    assert sql_error.returncode == 1
    assert "TABLE_NOT_FOUND" in sql_error.stderr and "Traceback" not in sql_error.stderr
    assert sql_error.stdout.splitlines() == ["a", "-", "1", "(1 row)"]  # stopped at the error
    assert cli(here, "sql", "SELEC 1").returncode == 1
    assert cli(here, "shell", "-c", ".nope").returncode == 1
    assert cli(here, "shell", "-f", str(tmp_path / "missing.sql")).returncode == 1
    connection = cli(here, "shell", "--url", "dosql://127.0.0.1:1", "-c", "SELECT 1")
    assert connection.returncode == 2 and "RPC_UNAVAILABLE" in connection.stderr
    assert cli(here, "sql", "--url", "dosql://127.0.0.1:1", "SELECT 1").returncode == 2
    for args in (["shell", "--bogus"], ["sql"], ["nosuch"], ["shell", "-p", "1", "-v", "a=1"]):
        usage = cli(here, *args)
        assert usage.returncode == 3, (args, usage.stderr)
        assert "Traceback" not in usage.stderr
    # no address anywhere: a usage error that says where it looked
    nowhere = cli(tmp_path, "sql", "SELECT 1")
    assert nowhere.returncode == 3 and ".dosql-data/cluster.toml" in nowhere.stderr
    assert cli(tmp_path, "flush", prog="dolake").returncode == 3


def test_commands_find_the_cluster_beside_them(here: Path) -> None:
    flushed = cli(here, "flush", "--wait", prog="dolake")  # no --url, no DOLAKE_URL
    assert flushed.returncode == 0, flushed.stderr
    assert isinstance(json.loads(flushed.stdout), dict)
    tail = cli(here, "tail", "--table", "people", "--from", "earliest", "--limit", "3")
    assert tail.returncode == 0, tail.stderr
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(events) == 3 and all("position" in e for e in events)


def _closed_reader(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command whose reader takes one line and goes away, like ``| head -1``."""
    proc = subprocess.Popen(
        [str(BIN / "dosql"), *args],
        cwd=cwd,
        env=_env(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=60), "", err)


def test_broken_pipe_is_quiet(here: Path) -> None:
    many = ["-c", "SELECT id FROM people ORDER BY id;" * 3000]
    shell = _closed_reader(here, "shell", "--mode", "csv", *many)
    assert shell.returncode == 141 and "Traceback" not in shell.stderr, shell.stderr
    for i in range(10, 60):
        cli(here, "sql", f"INSERT INTO people VALUES ({i}, {i}, 'p{i}')")
    tail = _closed_reader(here, "tail", "--table", "people", "--from", "earliest")
    assert tail.returncode == 141 and "Traceback" not in tail.stderr, tail.stderr


def test_ctrl_c_exits_130_without_traceback(here: Path) -> None:
    for args, first in (
        (["shell"], "SELECT 1 AS ready;\n"),
        (["tail", "--table", "people", "--from", "earliest"], None),
    ):
        proc = subprocess.Popen(
            [str(BIN / "dosql"), *args],
            cwd=here,
            env=_env(here),
            stdin=subprocess.PIPE,  # kept open: the shell waits for more input
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        if first:
            proc.stdin.write(first)
            proc.stdin.flush()
        assert proc.stdout.readline()  # connected and running: now interrupt it
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, (args, err)
        assert "Traceback" not in err, err


def test_interactive_session_on_a_terminal(here: Path) -> None:
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: a shell on a terminal
        os.chdir(here)
        os.execve(str(BIN / "dosql"), [str(BIN / "dosql"), "shell"], _env(here))
    output = b""

    def read_until(marker: bytes, timeout: float = 30) -> None:
        """Read until ``marker`` appears in what arrives from now on."""
        nonlocal output
        since = len(output)
        deadline = time.monotonic() + timeout
        while marker not in output[since:]:
            left = deadline - time.monotonic()
            assert left > 0, output
            ready, _, _ = select.select([fd], [], [], left)  # never block past the deadline
            if not ready:
                continue
            try:
                output += os.read(fd, 4096)
            except OSError:
                break

    read_until(b"dosql> ")
    os.write(fd, b"SELECT name\r")
    read_until(b"...> ")  # a statement continues until its ';'
    os.write(fd, b"  FROM people WHERE id = 2;\r")
    read_until(b"dosql> ")
    assert b"bob" in output
    os.write(fd, b"SELECT 'oops")
    read_until(b"oops")  # echoed: the line editor has it (a ^C sent with it could be
    # taken by the terminal before the shell reads, flushing the input unseen)
    os.write(fd, b"\x03")  # Ctrl-C drops the pending input
    read_until(b"dosql> ")
    os.write(fd, b"SELECT * FROM nowhere;\r")  # an error: reported, the shell goes on
    read_until(b"dosql> ")
    assert b"TABLE_NOT_FOUND" in output
    os.write(fd, b".quit\r")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    history = (here / ".dosql_history").read_text(encoding="utf-8")
    assert "FROM people WHERE id = 2;" in history and ".quit" in history
