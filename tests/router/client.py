"""A minimal synchronous protocol client for router tests (independent of the driver)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from websockets.sync.client import connect

from dosql import protocol


@dataclass
class Res:
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    rowcount: int = -1
    lastrowid: int | None = None
    info: dict[str, Any] | None = None


def ws_url(url: str) -> str:
    return "ws://" + url.split("://", 1)[1]


def http_url(url: str) -> str:
    return "http://" + url.split("://", 1)[1]


class Client:
    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._cm = connect(ws_url(url), additional_headers=headers, max_size=None, compression=None)
        self.ws = self._cm.__enter__()
        self.next_id = 1

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def call(self, make: Any) -> Res:
        rid = self.next_id
        self.next_id += 1
        self.ws.send(protocol.encode(make(rid)))
        res = Res()
        while True:
            reply = protocol.decode(self.ws.recv(timeout=60))
            if isinstance(reply, protocol.Error):
                raise reply.to_exception()
            if isinstance(reply, protocol.Ok):
                res.info = reply.info
                return res
            assert isinstance(reply, protocol.Result)
            if reply.columns is not None:
                res.columns = reply.columns
            res.rows.extend(reply.rows)
            if reply.done:
                res.rowcount, res.lastrowid = reply.rowcount, reply.lastrowid
                return res

    def execute(self, sql: str, params: Any = None) -> Res:
        return self.call(lambda rid: protocol.Execute(id=rid, sql=sql, params=params))

    def rows(self, sql: str, params: Any = None) -> list[tuple]:
        return [tuple(r) for r in self.execute(sql, params).rows]

    def executemany(self, sql: str, seq: list[Any]) -> Res:
        return self.call(lambda rid: protocol.ExecuteMany(id=rid, sql=sql, seq_params=seq))

    def begin(self) -> Res:
        return self.call(lambda rid: protocol.Begin(id=rid))

    def commit(self) -> Res:
        return self.call(lambda rid: protocol.Commit(id=rid))

    def rollback(self) -> Res:
        return self.call(lambda rid: protocol.Rollback(id=rid))


def http_get(url: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(http_url(url) + path, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_json(url: str, path: str) -> tuple[int, Any]:
    status, body = http_get(url, path)
    return status, json.loads(body)
