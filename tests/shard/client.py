"""A minimal synchronous protocol client for shard tests (reusable by other suites).

``ShardClient(url)`` speaks dosql.protocol over websockets.sync.client:
``execute`` gathers every Result chunk of a request and returns a
:class:`Reply`; errors come back as the typed DoSQLError of the reply.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from dosql import protocol
from dosql.errors import DoSQLError

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    columns: list[str] | None = None
    decltypes: list[str | None] | None = None
    rows: list[list[Any]] = field(default_factory=list)
    rowcount: int = -1
    lastrowid: int | None = None
    chunks: int = 0


class ShardClient:
    def __init__(self, url: str, *, token: str | None = None, max_size: int | None = 2**26):
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.ws = connect(
            url, additional_headers=headers, max_size=max_size, open_timeout=10, legacy=True
        )
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> ShardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, message: protocol.Message) -> None:
        self.ws.send(protocol.encode(message))

    def recv(self, timeout: float = 30) -> Any:
        return protocol.decode(self.ws.recv(timeout=timeout))

    def request(self, message: Any, timeout: float = 30) -> Any:
        """Send a non-Execute request; return its single reply (raises on Error)."""
        self.send(message)
        reply = self.recv(timeout)
        assert reply.id == message.id, (reply, message)
        if isinstance(reply, protocol.Error):
            raise reply.to_exception()
        return reply

    def execute(self, sql: str, params: Any = None, *, timeout_ms: int | None = None) -> Reply:
        rid = self.next_id()
        self.send(protocol.Execute(rid, sql, params, timeout_ms))
        return self._gather(rid)

    def executemany(self, sql: str, seq: list[Any]) -> Reply:
        rid = self.next_id()
        self.send(protocol.ExecuteMany(rid, sql, seq))
        return self._gather(rid)

    def _gather(self, rid: int) -> Reply:
        out = Reply()
        while True:
            msg = self.recv(60)
            assert msg.id == rid, (msg, rid)
            if isinstance(msg, protocol.Error):
                raise msg.to_exception()
            assert isinstance(msg, protocol.Result), msg
            if out.chunks == 0:
                out.columns, out.decltypes = msg.columns, msg.decltypes
            else:
                assert msg.columns is None
            out.chunks += 1
            out.rows.extend(msg.rows)
            if msg.done:
                out.rowcount, out.lastrowid = msg.rowcount, msg.lastrowid
                return out

    def begin(self, mode: str = "deferred") -> None:
        self.request(protocol.Begin(self.next_id(), mode))

    def commit(self) -> None:
        self.request(protocol.Commit(self.next_id()))

    def rollback(self) -> None:
        self.request(protocol.Rollback(self.next_id()))

    def ping(self) -> protocol.Ok:
        return self.request(protocol.Ping(self.next_id()))

    def lsn_info(self) -> dict[str, int]:
        return self.request(protocol.LsnInfo(self.next_id())).info

    def read_changes(
        self, from_lsn: int = 1, limit: int = 1000, table: str | None = None
    ) -> protocol.Changes:
        return self.request(protocol.ReadChanges(self.next_id(), from_lsn, limit, table))

    def all_changes(self, from_lsn: int = 1, batch: int = 500) -> list[protocol.Change]:
        out: list[protocol.Change] = []
        while True:
            got = self.read_changes(from_lsn, batch).changes
            out.extend(got)
            if len(got) < batch:
                return out
            from_lsn = got[-1].lsn + 1


def expect_error(fn: Any, code: str) -> DoSQLError:
    try:
        fn()
    except DoSQLError as exc:
        assert exc.code == code, f"expected {code}, got {exc.code}: {exc.message}"
        return exc
    raise AssertionError(f"expected error {code}, got success")


class ShardProcess:
    """A real shard process on 127.0.0.1 with port 0; always killed by stop()/kill()."""

    def __init__(
        self,
        db: Path,
        *,
        env: dict[str, str] | None = None,
        shard_id: str = "shard-0",
        args: tuple[str, ...] = (),
    ):
        self.db = Path(db)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.shard_id = shard_id
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log = self.db.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30) -> ShardProcess:
        logf = open(self.log, "a")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dosql.shard",
                "--id",
                self.shard_id,
                "--db",
                str(self.db),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=logf,
            text=True,
            cwd=REPO,
            env=self.env,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "listening":
                self.port = int(event["port"])
                return self
        self.kill()
        raise RuntimeError(f"shard did not start; log:\n{self.log.read_text()}")

    def client(self, token: str | None = None, **kw: Any) -> ShardClient:
        return ShardClient(self.url, token=token, **kw)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
