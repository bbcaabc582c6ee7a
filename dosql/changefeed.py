"""Client helper for change-stream subscribers (``ws://HOST:PORT/cdc/subscribe``).

::

    import dosql
    sub = dosql.subscribe("ws://127.0.0.1:7000", tables=["users"], start="earliest")
    for event in sub:                      # row changes, schema and commit events
        handle(event)
        save(sub.position)                 # resume later with start=saved_position

    # trio (also dosql.subscribe_async)
    async with dosql.subscribe_async(url, tables="*") as sub:
        async for event in sub: ...

``start`` is ``"latest"`` (default), ``"earliest"``, a position string from an
earlier event (or ``{"position": ...}``), a ``datetime`` or
``{"timestamp": ...}``. Events are dicts as the server sends them (see
dolake/subscribe/README.md) except that BLOB values are decoded back to
``bytes`` (``decode_binary=False`` keeps base64 text). Heartbeats only move
``position`` unless ``heartbeats=True``. An error event raises the matching
:class:`dosql.errors.DoSQLError` (``code`` ``SUBSCRIBER_TOO_SLOW``,
``INVALID_INPUT`` …); a refused handshake raises ``AuthorizationError``.

``dosql.subscribe`` and ``dosql.subscribe_async`` are these functions.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dosql.errors import AuthorizationError, DoSQLError, RPCError, ValidationError, from_wire

PATH = "/cdc/subscribe"


def endpoint(url: str) -> str:
    """``ws://host:port`` (or ``dosql://``/``http://``) -> the subscribe endpoint URL."""
    parts = urlsplit(url)
    scheme = {"dosql": "ws", "http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValidationError(
            f"subscribe URL {url!r} must look like ws://host:port", code="INVALID_INPUT"
        )
    path = parts.path if parts.path not in ("", "/") else PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def request(
    tables: Any = "*",
    start: Any = "latest",
    *,
    snapshot: bool = False,
    ops: list[str] | None = None,
    keys: list[Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The subscribe message for these arguments. ``options`` are sent as they are
    (``format="debezium"``, ``changes_only``, ``tombstones``, ``schemas``, ``name``:
    see dolake/subscribe/README.md); the server refuses unknown ones."""
    if isinstance(tables, str) and tables != "*":
        tables = [tables]
    msg: dict[str, Any] = {"tables": list(tables) if tables != "*" else "*"}
    if isinstance(start, dt.datetime):
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.UTC)
        start = {"timestamp": start.isoformat()}
    elif isinstance(start, str) and start not in ("latest", "earliest"):
        start = {"position": start}
    if snapshot:
        msg["snapshot"] = True
    else:
        msg["start"] = start
    if ops is not None:
        msg["ops"] = list(ops)
    if keys is not None:
        msg["filter"] = {"key": list(keys)}
    msg.update({k: v for k, v in options.items() if v is not None})
    return msg


def decode_event(event: dict[str, Any]) -> dict[str, Any]:
    """Turn the base64 values an event lists under ``binary`` back into bytes."""
    binary = event.get("binary")
    if not binary:
        return event
    for image in ("before", "after"):
        row = event.get(image)
        for col in binary.get(image, ()):
            if row is not None and isinstance(row.get(col), str):
                row[col] = base64.b64decode(row[col])
    key = event.get("key")
    for i in binary.get("key", ()):
        if key is not None and i < len(key) and isinstance(key[i], str):
            key[i] = base64.b64decode(key[i])
    return event


class _State:
    """What sync and async subscriptions share: position tracking and event handling."""

    def __init__(self, start: Any, decode_binary: bool, heartbeats: bool) -> None:
        self.position: str | None = start if _is_position(start) else None
        self.decode_binary = decode_binary
        self.heartbeats = heartbeats

    def handle(self, frame: str | bytes) -> dict[str, Any] | None:
        event = json.loads(frame)
        kind = event.get("type")
        if kind == "error":
            if event.get("position"):
                self.position = event["position"]
            raise from_wire({"code": event.get("code"), "message": event.get("message", "")})
        if event.get("position"):
            self.position = event["position"]
        heartbeat = kind == "heartbeat" or str(event.get("topic")).startswith(
            "__debezium-heartbeat."
        )
        if heartbeat and not self.heartbeats:
            return None
        return decode_event(event) if self.decode_binary else event


def _is_position(start: Any) -> bool:
    if isinstance(start, dict):
        return "position" in start
    return isinstance(start, str) and start not in ("latest", "earliest")


def _handshake_error(exc: Exception) -> DoSQLError:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    body: dict[str, Any] = {}
    try:
        body = json.loads(response.body).get("error", {})  # type: ignore[union-attr]
    except Exception:
        pass
    message = body.get("message") or f"handshake refused (HTTP {status})"
    code = body.get("code") or ("AUTHENTICATION_REQUIRED" if status == 401 else "RPC_ERROR")
    if status in (401, 403):
        return AuthorizationError(message, code=code)
    return RPCError(message, code=code)


def _headers(token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {token}"} if token else None


class Subscription:
    """A synchronous subscription: iterate for events; ``position`` resumes it."""

    def __init__(
        self,
        url: str,
        message: dict[str, Any],
        *,
        token: str | None = None,
        decode_binary: bool = True,
        heartbeats: bool = False,
        timeout: float | None = None,
    ) -> None:
        from websockets.exceptions import InvalidHandshake
        from websockets.sync.client import connect

        start = message.get("start", {})
        self._state = _State(
            start.get("position") if isinstance(start, dict) else start, decode_binary, heartbeats
        )
        self.timeout = timeout
        try:
            self.ws = connect(
                endpoint(url),
                additional_headers=_headers(token),
                compression=None,
                max_size=None,
                open_timeout=30,
                proxy=None,
                legacy=True,
            )
        except InvalidHandshake as exc:
            raise _handshake_error(exc) from None
        except OSError as exc:
            raise RPCError(f"cannot reach {url}: {exc}", code="RPC_UNAVAILABLE") from None
        self.ws.send(json.dumps(message))

    @property
    def position(self) -> str | None:
        return self._state.position

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                frame = self.ws.recv(timeout=self.timeout)
            except ConnectionClosed:
                raise StopIteration from None
            event = self._state.handle(frame)
            if event is not None:
                return event

    def close(self) -> None:
        """Close, draining what the server already sent: the client stops reading the socket
        while its frame queue is full, and would otherwise not see the server's close frame."""
        from websockets.exceptions import ConnectionClosed

        closer = threading.Thread(target=self.ws.close, daemon=True)
        closer.start()
        while closer.is_alive():
            try:
                self.ws.recv(timeout=0.05)
            except TimeoutError:
                continue
            except ConnectionClosed:
                break
        closer.join()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def subscribe(
    url: str,
    tables: Any = "*",
    start: Any = "latest",
    *,
    token: str | None = None,
    snapshot: bool = False,
    ops: list[str] | None = None,
    keys: list[Any] | None = None,
    decode_binary: bool = True,
    heartbeats: bool = False,
    timeout: float | None = None,
    **options: Any,
) -> Subscription:
    """Subscribe (sync, over websockets.sync.client); returns an iterator of event dicts."""
    message = request(tables, start, snapshot=snapshot, ops=ops, keys=keys, **options)
    return Subscription(
        url,
        message,
        token=token,
        decode_binary=decode_binary,
        heartbeats=heartbeats,
        timeout=timeout,
    )


class AsyncSubscription:
    """A trio subscription: ``async for event in sub``; ``position`` resumes it."""

    def __init__(self, ws: Any, state: _State) -> None:
        self.ws = ws
        self._state = state

    @property
    def position(self) -> str | None:
        return self._state.position

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                frame = await self.ws.recv()
            except ConnectionClosed:
                raise StopAsyncIteration from None
            event = self._state.handle(frame)
            if event is not None:
                return event


@asynccontextmanager
async def subscribe_async(
    url: str,
    tables: Any = "*",
    start: Any = "latest",
    *,
    token: str | None = None,
    snapshot: bool = False,
    ops: list[str] | None = None,
    keys: list[Any] | None = None,
    decode_binary: bool = True,
    heartbeats: bool = False,
    **options: Any,
) -> AsyncIterator[AsyncSubscription]:
    """``async with subscribe_async(url, ...) as sub: async for event in sub`` (trio)."""
    from websockets.exceptions import InvalidHandshake
    from websockets.trio.client import connect

    message = request(tables, start, snapshot=snapshot, ops=ops, keys=keys, **options)
    state = _State(start, decode_binary, heartbeats)
    async with AsyncExitStack() as stack:
        try:
            ws = await stack.enter_async_context(
                connect(
                    endpoint(url),
                    additional_headers=_headers(token),
                    compression=None,
                    max_size=None,
                    proxy=None,
                )
            )
        except InvalidHandshake as exc:
            raise _handshake_error(exc) from None
        except OSError as exc:
            raise RPCError(f"cannot reach {url}: {exc}", code="RPC_UNAVAILABLE") from None
        await ws.send(json.dumps(message))
        try:
            yield AsyncSubscription(ws, state)
        finally:
            await _drain_and_close(ws)


async def _drain_and_close(ws: Any) -> None:
    """Close while draining frames still queued (see Subscription.close)."""
    import trio
    from websockets.exceptions import ConnectionClosed

    async def drain() -> None:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass

    with trio.CancelScope(shield=True), trio.move_on_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await ws.aclose()
            nursery.cancel_scope.cancel()
