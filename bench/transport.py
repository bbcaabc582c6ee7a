"""The transport floor: WebSocket round trips over the router's hops, no SQL.

client --ws--> relay process --ws--> echo process, with frames of the same
sizes as a point select through the driver (an ``Execute`` out, a one-row
``Result`` back). Relay and echo are separate processes, like router and
shard, so the floor pays the same context switches. What the router adds on
top of this floor is its own overhead: parsing, planning, routing, SQLite.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect
from websockets.trio.client import connect as trio_connect
from websockets.trio.server import serve

from dosql import protocol

SQL = "SELECT id, name, v FROM bench_kv WHERE id = ?"


async def _echo(ws) -> None:
    with contextlib.suppress(ConnectionClosed):  # the client may leave without a close frame
        await _echo_frames(ws)


async def _echo_frames(ws) -> None:
    async for frame in ws:
        req = protocol.decode(frame)
        reply = protocol.Result(
            id=req.id,
            rows=[[req.params[0], "name-000042", 3.25]],
            columns=["id", "name", "v"],
            decltypes=["INTEGER", "TEXT", "REAL"],
        )
        await ws.send(protocol.encode(reply))


def _relay(upstream_url: str):
    async def handler(ws) -> None:
        async with trio_connect(upstream_url, compression=None) as up:
            with contextlib.suppress(ConnectionClosed):
                async for frame in ws:
                    await up.send(frame)
                    await ws.send(await up.recv())

    return handler


async def _serve(handler) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                handler, 0, host="127.0.0.1", compression=None, task_status=task_status
            )
        )
        port = server.listeners[0].socket.getsockname()[1]
        print(json.dumps({"port": port}), flush=True)


def _start(*args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.transport", *args], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"transport floor process {args[0]} did not start")
    return proc, json.loads(line)["port"]


class TransportFloor:
    """Echo and relay processes; close() stops them."""

    def __init__(self) -> None:
        self.echo, echo_port = _start("echo")
        self.relay, relay_port = _start("relay", f"ws://127.0.0.1:{echo_port}")
        self.url = f"ws://127.0.0.1:{relay_port}"

    def round_trips(self, n: int) -> list[float]:
        """Latency in ms of n sequential round trips with point-select-sized frames."""
        out = []
        with sync_connect(self.url, compression=None) as ws:
            for i in range(n):
                frame = protocol.encode(protocol.Execute(id=i, sql=SQL, params=[i % 1000]))
                t0 = time.perf_counter()
                ws.send(frame)
                protocol.decode(ws.recv())
                out.append((time.perf_counter() - t0) * 1000)
        return out

    def close(self) -> None:
        for proc in (self.relay, self.echo):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        trio.run(_serve, _echo)
    else:
        trio.run(_serve, _relay(sys.argv[2]))
