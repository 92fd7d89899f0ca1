"""A small HTTP/1.1 server on the asyncio loop: asyncio.Protocol + httptools.

Why not a framework: the REST API needs a handful of routes, exact control of
the bytes (TF Serving's JSON layout) and low per-request overhead, which a
Protocol with the C `httptools` parser gives (see docs/rest.md for numbers).

What it does:
- HTTP/1.1 keep-alive (HTTP/1.0 with `Connection: keep-alive`), pipelining:
  requests on one connection are answered in order, one at a time;
- bodies by Content-Length or chunked; `Expect: 100-continue`;
- a body limit: an oversized request gets 413 with a JSON error naming the
  limit, and the connection is closed after the body is discarded;
- a per-request time limit: 504 with TF Serving's DEADLINE_EXCEEDED JSON;
- optional CORS headers (TF Serving's three);
- exact routes (`add_route`) plus one prefix handler (the `/v1` API);
  anything else is a 404 JSON error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import httptools

from serving.api.rest import jsonfmt

log = logging.getLogger("serving.rest")

JSON = "application/json"
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)
_MAX_PIPELINE = 64  # queued requests per connection before we stop reading
_REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(slots=True)
class Request:
    """One parsed request. `path` is the raw (still percent-encoded) path."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    keep_alive: bool = True

    @property
    def decoded_path(self) -> str:
        return unquote(self.path)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str) -> Response:
    return Response(status, jsonfmt.error_json(message).encode())


class HttpServer:
    """HTTP/1.1 server whose handlers are coroutines `async (Request) -> Response`.

    Other parts of the server mount their endpoints with `add_route`, e.g. the
    observability helper's metrics page and `/v1/health/{live,ready}`:

        server.http.add_route("GET", "/v1/health/live", handler)

    Exact routes win over the prefix handler (`set_prefix_handler`, used for
    TF Serving's `/v1/...` API); any other path is a 404 JSON error.
    """

    def __init__(
        self,
        *,
        max_body_bytes: int,
        timeout_s: float | None = None,
        cors: bool = False,
        max_header_bytes: int = 64 * 1024,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self.cors = cors
        self.max_header_bytes = max_header_bytes
        self._routes: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self.port: int | None = None

    # ------------------------------------------------------------------ routing

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve `method path` (exact match, query string ignored) with `handler`.

        `handler(request)` is awaited on the event loop and returns a `Response`;
        a GET route also answers HEAD. Raising an exception gives a 500 JSON error.
        """
        self._routes[(method.upper(), path)] = handler

    def set_prefix_handler(self, prefix: str, handler: Handler) -> None:
        """Every path starting with `prefix` (case-insensitive) not in the routes.

        One handler per prefix (`/v1/`, `/v2/`); setting a prefix again replaces it.
        """
        prefix = prefix.lower()
        self._prefixes = [(p, h) for p, h in self._prefixes if p != prefix]
        self._prefixes.append((prefix, handler))

    def _resolve(self, method: str, path: str) -> Handler | None:
        handler = self._routes.get((method, path))
        if handler is None and method == "HEAD":
            handler = self._routes.get(("GET", path))
        if handler is None:
            lowered = path.lower()
            for prefix, candidate in self._prefixes:
                if lowered.startswith(prefix):
                    return candidate
        return handler

    async def dispatch(self, request: Request) -> Response:
        handler = self._resolve(request.method, request.path)
        if handler is None:
            return error_response(404, f"Not found: {request.method} {request.path}")
        try:
            if self.timeout_s is None:
                return await handler(request)
            return await asyncio.wait_for(handler(request), self.timeout_s)
        except asyncio.TimeoutError:
            return error_response(504, "Deadline Exceeded")
        except Exception:
            log.exception("REST handler failed for %s %s", request.method, request.path)
            return error_response(500, "Internal error while handling the request")

    # ---------------------------------------------------------------- lifecycle

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; let queued requests finish (up to `grace`), then close."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._connections):
            conn.close_when_idle()
        deadline = asyncio.get_running_loop().time() + grace
        while self._connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections):
            conn.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    __slots__ = (
        "_body",
        "_body_size",
        "_closing",
        "_header_size",
        "_headers",
        "_paused",
        "_queue",
        "_reject",
        "_url",
        "_worker",
        "parser",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._queue: collections.deque[Request | Response] = collections.deque()
        self._worker: asyncio.Task | None = None
        self._closing = False
        self._paused = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._reject: Response | None = None

    # ------------------------------------------------------------ transport side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self._closing = True
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if self._reject is None:
                self._fail(400, f"Malformed HTTP request: {exc}")

    def _fail(self, status: int, message: str) -> None:
        """A request we cannot parse: answer (after queued ones) and close."""
        self._queue.append(error_response(status, message))
        self._closing = True
        self._kick()

    def close_when_idle(self) -> None:
        self._closing = True
        if not self._queue and (self._worker is None or self._worker.done()):
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value)
        if self._header_size > self.server.max_header_bytes:
            raise httptools.HttpParserError("request headers too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        limit = self.server.max_body_bytes
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._reject = error_response(
                413,
                f"Request body of {int(length)} bytes exceeds the limit of {limit} bytes "
                "(--max_request_bytes)",
            )
            return
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._reject is not None:
            return  # discarding an oversized body
        self._body_size += len(body)
        if self._body_size > self.server.max_body_bytes:
            limit = self.server.max_body_bytes
            self._reject = error_response(
                413,
                f"Request body exceeds the limit of {limit} bytes (--max_request_bytes)",
            )
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._reject is not None:
            self._queue.append(self._reject)
            self._closing = True
            self._kick()
            return
        url = httptools.parse_url(self._url)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            method=self.parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1") if url.path else "/",
            query=url.query.decode("latin-1") if url.query else "",
            headers=self._headers,
            body=body,
            keep_alive=self.parser.should_keep_alive(),
        )
        self._queue.append(request)
        if len(self._queue) > _MAX_PIPELINE and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._kick()

    # --------------------------------------------------------------- responding

    def _kick(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        server = self.server
        while self._queue:
            item = self._queue.popleft()
            if self._paused and len(self._queue) < _MAX_PIPELINE // 2 and self.transport:
                self._paused = False
                self.transport.resume_reading()
            if isinstance(item, Response):  # a parse failure or a rejected body
                self._write(item, head_only=False, keep_alive=False)
                self.abort()
                return
            response = await server.dispatch(item)
            keep_alive = item.keep_alive and not (self._closing and not self._queue)
            self._write(response, head_only=item.method == "HEAD", keep_alive=keep_alive)
            if not keep_alive:
                self.abort()
                return
        if self._closing:
            self.abort()

    def _write(self, response: Response, *, head_only: bool, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = response.body
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(body)}",
        ]
        if not keep_alive:
            lines.append("Connection: close")
        if self.server.cors:
            lines.extend(f"{k}: {v}" for k, v in CORS_HEADERS)
        lines.extend(f"{k}: {v}" for k, v in response.headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if head_only or not body:
            transport.write(head)
        elif len(body) < 65536:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
