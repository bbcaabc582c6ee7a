"""Real server processes for the driver tests (a shard speaks the router's client protocol)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dosql.driver as dbapi

ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"dosql://127.0.0.1:{port}"


@contextlib.contextmanager
def start_server(db: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start a shard on a free port; stop it (even on failure) when the block ends."""
    cmd = [sys.executable, "-m", "dosql.shard", "--id", "shard-0", "--db", str(db), "--port", "0"]
    full_env = {**os.environ, "LOG_LEVEL": "warning", **(env or {})}
    log = open(db.with_suffix(".log"), "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        port = _announced_port(proc, db.with_suffix(".log"))
        yield Server(proc, port)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def _announced_port(proc: subprocess.Popen[str], log: Path) -> int:
    found: dict[str, int] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "listening":
                found["port"] = int(event["port"])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if "port" not in found:
        raise RuntimeError(f"server did not announce its port; log:\n{log.read_text()[-3000:]}")
    return found["port"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(tmp_path_factory.mktemp("shard") / "shard.db") as srv:
        yield srv


@pytest.fixture
def conn(server: Server) -> Iterator[dbapi.Connection]:
    connection = dbapi.connect(server.url, timeout=10)
    try:
        yield connection
    finally:
        connection.close()


_counter = iter(range(10**6))


@pytest.fixture
def table(conn: dbapi.Connection) -> str:
    """A fresh table t_N(id INTEGER PRIMARY KEY, name TEXT UNIQUE, score REAL, data BLOB)."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    conn.cursor().execute(
        f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT UNIQUE, score REAL, data BLOB)"
    )
    return name
