"""A blocking WebSocket client that speaks :mod:`dosql.protocol` to a router or shard.

One :class:`Transport` is one WebSocket, one request at a time: the server
answers requests in order, so a request's reply is read before the next
request is sent. Result sets arrive as a stream of ``Result`` chunks, and a
:class:`ResultStream` reads them one at a time when the cursor needs more
rows; the client's small receive queue (``max_queue``) then pushes back on
the server through TCP, so a large result is never held whole in memory.

Every wait is bounded: a request carries ``timeout_ms`` for the server, and
the client waits at most ``timeout + GRACE`` for each frame. A socket that
stays silent longer, or closes, marks the transport *broken*; every later
request fails fast with ``OperationalError`` and the connection must be
reopened.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import sys
import uuid
import weakref
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from dosql import errors as E  # noqa: N812
from dosql import protocol as P  # noqa: N812
from dosql.driver.exceptions import Error, InterfaceError, OperationalError, wrap

log = logging.getLogger(__name__)

# Extra seconds the client waits beyond the server-side timeout before it
# declares the socket dead: the server needs a moment to notice and answer.
GRACE = 2.0
MAX_FRAME = 256 * 1024 * 1024
_SCHEMES = {"dosql": "ws", "ws": "ws", "dosqls": "wss", "wss": "wss"}


def ws_url(url: str) -> str:
    """``dosql://host:port[/path]`` (or ws://, wss://, dosqls://) as a WebSocket URL."""
    if not isinstance(url, str):
        raise InterfaceError(
            f"url must be a string like 'dosql://127.0.0.1:7000', not {type(url).__name__}",
            code="INVALID_INPUT",
            category="validation",
        )
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise InterfaceError(
            f"invalid url {url!r}: expected 'dosql://HOST:PORT' or 'ws://HOST:PORT'",
            code="INVALID_INPUT",
            category="validation",
        )
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


class Transport:
    """One WebSocket to a server, with request ids, deadlines and a broken flag."""

    def __init__(self, url: str, *, token: str | None, timeout: float) -> None:
        self.url = ws_url(url)
        self.timeout = timeout
        self.broken: str | None = None  # why, once the socket is unusable
        self.active: ResultStream | None = None  # the stream whose chunks are still coming
        self._ids = itertools.count(1)
        self._ws = self._open(token)
        _OPEN.add(self)

    def _open(self, token: str | None) -> ClientConnection:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            return connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.timeout + GRACE,
                compression=None,
                proxy=None,
                max_size=MAX_FRAME,
                max_queue=4,
                close_timeout=1,
                # websockets 17 wants `with connect(...)`; a DB-API connection outlives
                # any block, so opt into the plain-connection form explicitly.
                legacy=True,
            )
        except InvalidStatus as exc:
            failure = _refused(self.url, exc)
            raise failure from failure.__cause__
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            err = E.RPCError(
                f"cannot connect to {self.url}: {exc or type(exc).__name__}; "
                "check that the router is running and the address is right",
                code="RPC_UNAVAILABLE",
                details={"url": self.url},
            )
            failure = wrap(err, exc)
            raise failure from failure.__cause__

    # ------------------------------------------------------------------ low level

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, message: P.Message) -> None:
        self._check()
        try:
            self._ws.send(P.encode(message))
        except (ConnectionClosed, OSError) as exc:
            failure = self._break(f"connection to {self.url} lost while sending: {exc}", exc)
            raise failure from failure.__cause__

    def receive(self, request_id: int, timeout: float | None = None) -> P.AnyMessage:
        """The next frame answering ``request_id``; frames for other ids are skipped."""
        wait = (self.timeout if timeout is None else timeout) + GRACE
        while True:
            self._check()
            try:
                data = self._ws.recv(timeout=wait)
            except TimeoutError as exc:
                failure = self._break(
                    f"{self.url} did not answer within {wait:.1f}s; the connection is closed, "
                    "open a new one",
                    exc,
                    code="TIMEOUT",
                )
                raise failure from failure.__cause__
            except (ConnectionClosed, OSError) as exc:
                failure = self._break(f"connection to {self.url} lost: {exc}", exc)
                raise failure from failure.__cause__
            try:
                message = P.decode(data)
            except E.DoSQLError as exc:
                failure = self._break(f"{self.url} sent a malformed frame: {exc}", exc)
                raise failure from failure.__cause__
            msg_id = getattr(message, "id", None)
            if msg_id == request_id or (isinstance(message, P.Error) and msg_id is None):
                return message
            log.debug("skipping frame for request %s (waiting for %s)", msg_id, request_id)

    # ------------------------------------------------------------------ requests

    def prepare(self) -> None:
        """Finish the stream still in flight, if any, before a new request goes out."""
        self._check()
        if self.active is not None:
            self.active.finish()

    def call(self, message: P.Message) -> P.Ok | P.Result:
        """Send a request and return its single reply; an Error reply raises."""
        self.prepare()
        self.send(message)
        reply = self.receive(message.id)  # type: ignore[attr-defined]
        return _checked(reply)

    def execute(self, message: P.Execute | P.ExecuteMany) -> ResultStream:
        """Send a statement; the returned stream has its first chunk already read."""
        self.prepare()
        self.send(message)
        first = _checked(self.receive(message.id))
        if not isinstance(first, P.Result):
            return ResultStream(self, message.id, P.Result(id=message.id, rows=[], done=True))
        stream = ResultStream(self, message.id, first)
        if not first.done:
            self.active = stream
        return stream

    def ping(self, timeout: float = 5.0) -> None:
        self.prepare()
        ping = P.Ping(id=self.next_id())
        self.send(ping)
        _checked(self.receive(ping.id, timeout=timeout))

    def close(self) -> None:
        _OPEN.discard(self)
        try:
            if sys.is_finalizing():
                # The websockets reader thread is a daemon and may be frozen by now:
                # a closing handshake would wait on it forever. Drop the socket.
                self._ws.socket.close()
            else:
                self._ws.close()
        except Exception:  # closing must not fail: the socket may already be gone
            log.debug("close failed", exc_info=True)
        if self.broken is None:
            self.broken = "the connection is closed"

    # ------------------------------------------------------------------ helpers

    def _check(self) -> None:
        if self.broken is not None:
            raise wrap(E.RPCError(f"connection unusable: {self.broken}", code="RPC_UNAVAILABLE"))

    def _break(self, message: str, cause: BaseException, code: str = "RPC_UNAVAILABLE") -> Error:
        self.broken = message
        cls = E.TimeoutError_ if code == "TIMEOUT" else E.RPCError
        failure = wrap(cls(message, code=code, details={"url": self.url}), cause)
        stream, self.active = self.active, None
        if stream is not None:
            # Its remaining rows are lost: the cursor must hear so, not see a short result.
            stream.done = True
            stream.error = stream.error or failure
        try:
            self._ws.close()
        except Exception:
            log.debug("close after failure failed", exc_info=True)
        return failure


class ResultStream:
    """The chunks of one statement's reply, pulled from the socket on demand."""

    def __init__(self, transport: Transport, request_id: int, first: P.Result) -> None:
        self.transport = transport
        self.request_id = request_id
        self.columns: list[str] = list(first.columns or [])
        self.decltypes = first.decltypes
        self.first_rows: list[list[Any]] = first.rows
        self.chunks = 1  # chunks received so far (tests use it to check streaming)
        self.done = first.done
        self.rowcount = first.rowcount if first.done else -1
        self.lastrowid = first.lastrowid if first.done else None
        # When another request forces this stream to finish before the cursor has
        # read it, the remaining chunks are buffered here (keep=True) so the cursor
        # still sees every row, or dropped (keep=False, after the cursor let go).
        self.keep = True
        self.buffered: deque[list[list[Any]]] = deque()
        self.error: Error | None = None

    def next_chunk(self) -> list[list[Any]] | None:
        """The next chunk's rows, or None when the stream is finished."""
        if self.buffered:
            return self.buffered.popleft()
        if self.error is not None:
            raise self.error
        if self.done:
            return None
        return self._read()

    def finish(self) -> None:
        """Read the rest of the stream off the socket: buffered for the cursor, or dropped."""
        while not self.done:
            try:
                rows = self._read()
            except Error:
                return  # kept in self.error for the cursor
            if self.keep and rows:
                self.buffered.append(rows)

    def discard(self) -> None:
        """The cursor no longer wants these rows; drop them as they arrive."""
        self.keep = False
        self.buffered.clear()
        self.error = None

    def _read(self) -> list[list[Any]]:
        try:
            reply = self.transport.receive(self.request_id)
        except Error as exc:
            self.error = exc
            self._finish()
            raise
        self.chunks += 1
        if isinstance(reply, P.Error):
            self.error = wrap(reply.to_exception())
            self._finish()
            raise self.error
        if not isinstance(reply, P.Result):
            self.error = InterfaceError(
                f"unexpected {type(reply).__name__} in a result stream",
                code="INVALID_MESSAGE",
                category="rpc",
            )
            self._finish()
            raise self.error
        if reply.done:
            self.rowcount = reply.rowcount
            self.lastrowid = reply.lastrowid
            self._finish()
        return reply.rows

    def _finish(self) -> None:
        self.done = True
        if self.transport.active is self:
            self.transport.active = None


def new_trace_id() -> str:
    return uuid.uuid4().hex[:16]


def _checked(reply: P.AnyMessage) -> Any:
    if isinstance(reply, P.Error):
        raise wrap(reply.to_exception())
    if not isinstance(reply, P.Ok | P.Result):
        raise InterfaceError(
            f"unexpected reply {type(reply).__name__}", code="INVALID_MESSAGE", category="rpc"
        )
    return reply


def _refused(url: str, exc: InvalidStatus) -> Error:
    """The server refused the handshake (401 without a valid token, 404, ...)."""
    status = exc.response.status_code
    code, message = "RPC_UNAVAILABLE", f"{url} refused the connection with HTTP {status}"
    try:
        body: Any = json.loads(exc.response.body or b"{}")
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code = str(error.get("code") or code)
        message = f"{error.get('message') or message} (HTTP {status})"
    except (ValueError, AttributeError):
        pass
    if status in (401, 403) and code == "RPC_UNAVAILABLE":
        code = "AUTHENTICATION_REQUIRED"
    cls = E.CODES.get(code, E.RPCError)
    if not issubclass(cls, E.AuthorizationError):
        cls = E.RPCError
    err = cls(message, code=code, details={"url": url, "http_status": status})
    err.__cause__ = exc
    # A refused handshake is a connection problem, whatever the code: OperationalError.
    refused = OperationalError(
        message, code=code, category=str(err.category), details=dict(err.details)
    )
    refused.__cause__ = err
    return refused


# Connections still open at interpreter exit are closed while the websockets
# reader threads still run (atexit comes before daemon threads are frozen), so a
# program that forgets close() exits promptly instead of hanging.
_OPEN: weakref.WeakSet[Transport] = weakref.WeakSet()


@atexit.register
def _close_open_transports() -> None:
    for transport in list(_OPEN):
        transport.close()
