"""What every service process shares: one port for WebSockets and plain HTTP.

A :class:`Service` serves ``/health``, ``/health/deep``, ``/metrics``
(Prometheus text) and ``/status`` (JSON) over HTTP GET on the same port as its
WebSocket protocol, checks bearer tokens during the WebSocket handshake, and
announces the port it bound as one JSON line on stdout so a launcher that
asked for port 0 learns where it listens.
"""

from __future__ import annotations

import hmac
import http
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.trio.server import Server, ServerConnection, serve

from dosql.config import Token

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]
DeepHealthFn = Callable[[], Awaitable[dict[str, Any]]]
Handler = Callable[[ServerConnection], Awaitable[None]]

# Scope granted to connections when no tokens are configured (an open dev cluster).
OPEN_SCOPE = "admin"


def bearer_token(headers: Headers) -> str | None:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def match_token(tokens: tuple[Token, ...], presented: str | None) -> Token | None:
    """Constant-time comparison against every configured token."""
    found = None
    if presented is None:
        return None
    for token in tokens:
        if hmac.compare_digest(token.token.encode(), presented.encode()):
            found = token
    return found


def json_response(status: http.HTTPStatus, body: Any) -> Response:
    data = json.dumps(body, default=str, indent=None).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


def text_response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


class Service:
    """HTTP endpoints, auth and startup announcement around a WebSocket handler."""

    def __init__(
        self,
        name: str,
        *,
        tokens: tuple[Token, ...] = (),
        registry: CollectorRegistry | None = None,
        status: StatusFn | None = None,
        deep_health: DeepHealthFn | None = None,
        ws_paths: tuple[str, ...] = ("/",),
        routes: dict[str, StatusFn] | None = None,
    ) -> None:
        self.name = name
        self.routes = dict(routes or {})  # extra GET paths answered with JSON
        self.tokens = tokens
        self.registry = registry or CollectorRegistry()
        self.status = status or (lambda: {})
        self.deep_health = deep_health
        self.ws_paths = ws_paths
        self.server: Server | None = None
        self.port: int | None = None

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        is_upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if not is_upgrade:
            return await self._http(path)
        if not any(path == p or (p != "/" and path.startswith(p)) for p in self.ws_paths):
            return json_response(
                http.HTTPStatus.NOT_FOUND, _err("NOT_FOUND", f"no endpoint at {path}")
            )
        scope = self.authorize(request.headers)
        if scope is None:
            return json_response(
                http.HTTPStatus.UNAUTHORIZED,
                _err(
                    "AUTHENTICATION_REQUIRED",
                    "a valid bearer token is required: send 'Authorization: Bearer <token>'",
                ),
            )
        conn.scope = scope  # type: ignore[attr-defined]
        conn.path = path  # type: ignore[attr-defined]
        return None

    def authorize(self, headers: Headers) -> str | None:
        """The scope a connection gets, or None if it must be refused."""
        if not self.tokens:
            return OPEN_SCOPE
        token = match_token(self.tokens, bearer_token(headers))
        return token.scope if token else None

    async def _http(self, path: str) -> Response:
        try:
            if path == "/health":
                return json_response(http.HTTPStatus.OK, {"status": "ok", "service": self.name})
            if path == "/health/deep":
                if self.deep_health is None:
                    return json_response(http.HTTPStatus.OK, {"status": "ok", "service": self.name})
                body = await self.deep_health()
                ok = body.get("status") == "ok"
                code = http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE
                return json_response(code, {"service": self.name, **body})
            if path == "/metrics":
                return text_response(
                    http.HTTPStatus.OK,
                    generate_latest(self.registry),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            if path == "/status":
                return json_response(http.HTTPStatus.OK, {"service": self.name, **self.status()})
            if path in self.routes:
                return json_response(http.HTTPStatus.OK, self.routes[path]())
        except Exception as exc:  # an endpoint must never take the process down
            log.exception("http endpoint failed", extra={"path": path})
            return json_response(
                http.HTTPStatus.INTERNAL_SERVER_ERROR, _err("INTERNAL", f"{path} failed: {exc}")
            )
        return json_response(
            http.HTTPStatus.NOT_FOUND,
            _err(
                "NOT_FOUND", f"no endpoint at {path}; try /health, /health/deep, /metrics, /status"
            ),
        )

    async def serve(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        max_size: int,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the server until cancelled; reports the Server through task_status."""
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve(
                    handler,
                    port,
                    host=host,
                    process_request=self.process_request,
                    max_size=max_size,
                    compression=None,
                    ping_interval=20,
                    ping_timeout=60,
                    task_status=task_status,
                )
            )
            self.server = server
            self.port = server.listeners[0].socket.getsockname()[1]
            announce(self.name, host, self.port)
            task_status.started(server)


def announce(service: str, host: str, port: int) -> None:
    """The one line a launcher waits for on stdout."""
    sys.stdout.write(
        json.dumps({"event": "listening", "service": service, "host": host, "port": port}) + "\n"
    )
    sys.stdout.flush()
    log.info("listening", extra={"host": host, "port": port})


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
