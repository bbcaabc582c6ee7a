"""Test helpers: start a real lake writer process, speak CDC to it, read the lake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from dolake import readers
from dolake.flush_cli import flush
from dosql import protocol

ROOT = Path(__file__).resolve().parents[2]
US = 1_700_000_000_000_000  # a commit_ts base (UTC microseconds)


class Lake:
    """A `python -m dolake serve` subprocess on port 0."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, config: str = ""):
        self.data_dir = data_dir
        self.config_path = data_dir / "dosql.toml"
        if not self.config_path.exists():
            self.config_path.write_text(config)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, env: dict[str, str] | None = None, port: int = 0) -> Lake:
        run_env = {**self.env, **(env or {})}
        log = open(self.data_dir / "lake.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dolake",
                "serve",
                "--config",
                str(self.config_path),
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            env=run_env,
            cwd=ROOT,
        )
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("lake exited: " + (self.data_dir / "lake.log").read_text()[-3000:])
        event = json.loads(line)
        assert event["event"] == "listening" and event["service"] == "lake"
        self.port = event["port"]
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def flush(self, table: str | None = None) -> dict:
        return flush(self.url, table=table, wait=True)

    def catalog(self):
        return readers.open_catalog(self.config_path, data_dir=self.data_dir)

    def http(self, path: str) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


class CDC:
    """A minimal synchronous CDC client (what a shard's streamer does)."""

    def __init__(self, lake: Lake, shard: str | None = None):
        self.ws = connect(lake.url + "/cdc", max_size=None, open_timeout=10, legacy=True)
        self.shard = shard
        self.committed: list[int] = []
        self.welcome: int | None = None
        if shard:
            self.welcome = self.hello(shard)

    def hello(self, shard: str, current: int = 0, oldest: int = 0) -> int:
        self.ws.send(
            protocol.encode(protocol.CDCHello(shard=shard, current_lsn=current, oldest_lsn=oldest))
        )
        reply = self.recv()
        assert isinstance(reply, protocol.CDCWelcome), reply
        return reply.committed_lsn

    def recv(self, timeout: float = 30) -> Any:
        while True:
            msg = protocol.decode(self.ws.recv(timeout=timeout))
            if isinstance(msg, protocol.Committed):
                self.committed.append(msg.lsn)
                continue
            return msg

    def send(self, changes: list[protocol.Change], shard: str | None = None) -> Any:
        batch = protocol.ChangeBatch(
            shard=shard or self.shard or "",
            first_lsn=changes[0].lsn,
            last_lsn=changes[-1].lsn,
            changes=changes,
        )
        self.ws.send(protocol.encode(batch))
        return self.recv()

    def send_ok(self, changes: list[protocol.Change]) -> None:
        for _ in range(200):
            reply = self.send(changes)
            if isinstance(reply, protocol.BatchAck):
                return
            assert isinstance(reply, protocol.BatchNack) and reply.reason == "buffer_full", reply
            time.sleep(reply.retry_after_ms / 1000)
        raise AssertionError("batch never accepted")

    def close(self) -> None:
        self.ws.close()


def col(name: str, decl: str, pk: int = 0) -> protocol.ColumnInfo:
    return protocol.ColumnInfo(name, decl, False, pk)


def create(
    lsn: int,
    table: str,
    columns: list[protocol.ColumnInfo],
    pk: list[str] | None = None,
    action: str = "create",
) -> protocol.Change:
    schema = protocol.TableSchema(
        action=action,
        columns=columns,
        primary_key=pk if pk is not None else [c.name for c in columns if c.pk],
    )
    return protocol.Change(lsn, lsn, US + lsn, table, "schema", schema=schema)


def ins(lsn: int, table: str, row: dict, key: list | None = None, txid: int | None = None):
    return protocol.Change(
        lsn,
        txid or lsn,
        US + lsn,
        table,
        "insert",
        key=key or [next(iter(row.values()))],
        after=row,
    )


def upd(lsn: int, table: str, before: dict, after: dict, key: list | None = None):
    return protocol.Change(
        lsn,
        lsn,
        US + lsn,
        table,
        "update",
        key=key or [next(iter(after.values()))],
        before=before,
        after=after,
    )


def dele(lsn: int, table: str, before: dict, key: list | None = None):
    return protocol.Change(
        lsn, lsn, US + lsn, table, "delete", key=key or [next(iter(before.values()))], before=before
    )


def _recv_committed(self: CDC, lsn: int, timeout: float = 10) -> None:
    """Wait for a Committed announcement reaching ``lsn``."""
    deadline = time.time() + timeout
    while not self.committed or self.committed[-1] < lsn:
        left = deadline - time.time()
        if left <= 0:
            raise AssertionError(f"no Committed({lsn}); got {self.committed}")
        try:
            msg = protocol.decode(self.ws.recv(timeout=left))
        except TimeoutError:
            continue
        if isinstance(msg, protocol.Committed):
            self.committed.append(msg.lsn)


CDC.recv_committed = _recv_committed  # type: ignore[attr-defined]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
