"""Helpers for subscriber tests: a subscribe server process, shard log reads, applying events."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

import dosql
from dolake.subscribe import position
from dosql import protocol

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-secret"
READ = "read-secret"


class SubscribeServer:
    """``python -m dolake.subscribe`` on port 0 (the handler the lake writer mounts)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dolake.subscribe", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("subscribe server exited: " + log.read_text()[-3000:])
        event = json.loads(line)
        assert event["event"] == "listening" and event["service"] == "subscribe"
        self.url = f"ws://127.0.0.1:{event['port']}"

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def shard_call(url: str, message: protocol.Message) -> Any:
    with connect(url, additional_headers={"Authorization": f"Bearer {ADMIN}"}, max_size=None) as ws:
        ws.send(protocol.encode(message))
        return protocol.decode(ws.recv(timeout=30))


def heads(cluster: Any) -> dict[str, tuple[int, int]]:
    """Shard -> (current_lsn, oldest_lsn)."""
    out = {}
    for sid, url in cluster.shard_urls.items():
        info = shard_call(url, protocol.LsnInfo(1)).info
        out[sid] = (info["current_lsn"], info["oldest_lsn"])
    return out


def shard_changes(cluster: Any, from_lsn: dict[str, int] | None = None) -> dict[str, list]:
    """Every retained change of every shard (LSN order)."""
    out: dict[str, list] = {}
    for sid, url in cluster.shard_urls.items():
        changes: list[protocol.Change] = []
        nxt = (from_lsn or {}).get(sid, 1)
        while True:
            reply = shard_call(url, protocol.ReadChanges(1, nxt, 10000))
            if not reply.changes:
                break
            changes += reply.changes
            nxt = reply.changes[-1].lsn + 1
        out[sid] = changes
    return out


def expected(
    changes: dict[str, list], tables: set[str], reference: dict[str, str] | None = None
) -> list[tuple]:
    """(shard, lsn, op, before, after) of the row changes a subscriber must get."""
    reference = reference or {}
    out = []
    for sid, chs in changes.items():
        for ch in chs:
            name = ch.table.lower()
            if name not in tables or ch.op == "schema":
                continue
            if name in reference and reference[name] != sid:
                continue
            out.append((sid, ch.lsn, ch.op[0].replace("i", "c"), ch.before, ch.after))
    return out


def rows_of(events: list[dict]) -> list[tuple]:
    return [
        (e["source"]["shard"], e["source"]["lsn"], e["op"], e["before"], e["after"])
        for e in events
        if "op" in e and e["op"] != "r"
    ]


def caught_up(pos: str | None, target: dict[str, int]) -> bool:
    if not pos:
        return False
    vector = position.decode(pos)
    return all(vector.get(s, 0) >= lsn for s, lsn in target.items())


def collect(url: str, target: dict[str, int], *, timeout: float = 60, **kwargs: Any) -> list[dict]:
    """Events of one subscription until its position reaches ``target`` (per-shard LSNs)."""
    kwargs.setdefault("token", READ)
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    with dosql.subscribe(url, heartbeats=True, timeout=timeout, **kwargs) as sub:
        for event in sub:
            if event.get("type") != "heartbeat":
                events.append(event)
            # a heartbeat is queued after everything before its position (commit markers too)
            if event.get("type") == "heartbeat" and caught_up(sub.position, target):
                break
            assert time.monotonic() < deadline, "subscriber did not catch up"
    return events


def apply(con: sqlite3.Connection, events: list[dict], keys: dict[str, list[str]]) -> None:
    """Apply row events to a SQLite database (tables already created), by primary key."""
    for e in events:
        if "op" not in e:
            continue
        table = e["source"]["table"]
        pk = keys[table.lower()]
        if e["op"] in ("u", "d"):
            image = e["before"] if e["op"] == "d" else e["after"]
            where = " AND ".join(f'"{k}" IS ?' for k in pk)
            con.execute(f'DELETE FROM "{table}" WHERE {where}', [image[k] for k in pk])
        if e["op"] in ("c", "u", "r"):
            cols = list(e["after"])
            names = ", ".join(f'"{c}"' for c in cols)
            marks = ", ".join("?" for _ in cols)
            con.execute(
                f'INSERT INTO "{table}" ({names}) VALUES ({marks})', [e["after"][c] for c in cols]
            )
