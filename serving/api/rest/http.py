"""The REST transport: a raw ASGI application served by uvicorn on the running loop.

uvicorn (with the C `httptools` parser) does HTTP/1.1: keep-alive, pipelining
(answers in request order), chunked bodies, `Expect: 100-continue`, write
flow control and graceful shutdown. This module adds only what TF Serving's
REST API needs on top, with no web framework in between:

- the seam to the handlers: `Request` in, `Response` out (`Handler`);
- routing: exact routes (`add_route`) plus prefix handlers (the `/v1` and `/v2` APIs),
  anything else a 404 JSON error;
- the body limit (`--rest_api_max_request_bytes`): an over-limit
  `Content-Length` is answered 413 before any of the body is read, a chunked
  body is cut off at the limit;
- 405 for methods TF Serving's HTTP server does not pass to its handlers
  (it passes GET, POST, HEAD, PUT, DELETE, PATCH and OPTIONS; the API answers
  those it does not route with TF Serving's 400 "Malformed request");
- the per-request time limit (`--rest_api_timeout_in_ms`): 504 with TF
  Serving's DEADLINE_EXCEEDED JSON;
- optional CORS headers (TF Serving's three).

Connection-level limits (idle and read timeouts, the connection cap, header
size) live in `serving.api.rest.connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import uvicorn

from serving.api.rest import jsonfmt
from serving.api.rest.connections import Limits, protocol_class

log = logging.getLogger("serving.rest")

JSON = "application/json"
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)
_CORS = [(k.lower().encode(), v.encode()) for k, v in CORS_HEADERS]
_CLOSE = (b"connection", b"close")
# The methods TF Serving's HTTP server (libevent, as it configures it) hands to
# its handlers; anything else never reaches them.
METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})
_ALLOW = "GET, HEAD, POST, OPTIONS"
# A larger response body is handed to the connection this much at a time, each
# slice after the previous one has drained: the transport then never holds a
# copy of the whole body beside the body itself.
SEND_SLICE = 1 << 18

# ASGI's callables, spelled out so no ASGI typing package is needed.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Request:
    """One request. `path` is the raw (still percent-encoded) path."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes | bytearray
    keep_alive: bool = True

    @property
    def decoded_path(self) -> str:
        return unquote(self.path)


class Streamed(Protocol):
    """A body written while it is sent: its exact size first, then its bytes in order."""

    nbytes: int

    def __iter__(self) -> Iterator[bytes]: ...


@dataclass(slots=True)
class Response:
    status: int
    body: bytes | list[bytes] | Streamed = b""  # pieces are sent one after another
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str) -> Response:
    return Response(status, jsonfmt.error_body(message))


class _Deadline:
    """Cancels the current task at a deadline; cheaper than asyncio.timeout per request.

    One timer handle and no context-manager machinery: on the REST hot path
    asyncio.timeout measured as a large share of the transport's own cost.
    """

    __slots__ = ("expired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.expired = False

    def __call__(self) -> None:
        self.expired = True
        self.task.cancel()


class RestApp:
    """The ASGI application: routes, body limit, time limit, CORS.

    Handlers are coroutines `async (Request) -> Response`; exact routes win
    over the prefix handler; a GET route also answers HEAD; a handler that
    raises gives a 500 JSON error.
    """

    def __init__(
        self,
        *,
        max_body_bytes: int,
        timeout_s: float | None = None,
        cors: bool = False,
        max_body_flag: str = "--max_request_bytes",
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_body_flag = max_body_flag
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self.cors = cors
        self._routes: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []

    # ------------------------------------------------------------------ routing

    def add_route(self, method: str, path: str, handler: Handler) -> None:
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
        deadline = timer = None
        if self.timeout_s is not None:
            task = asyncio.current_task()
            assert task is not None
            deadline = _Deadline(task)
            timer = task.get_loop().call_later(self.timeout_s, deadline)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if deadline is None or not deadline.expired:
                raise  # the server is stopping
            if sys.version_info >= (3, 11):
                deadline.task.uncancel()
            return error_response(504, "Deadline Exceeded")
        except Exception:
            log.exception("REST handler failed for %s %s", request.method, request.path)
            return error_response(500, "Internal error while handling the request")
        finally:
            if timer is not None:
                timer.cancel()

    # --------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan events are sent (lifespan="off"), no websockets
        method: str = scope["method"]
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            old = headers.get(name)
            headers[name] = value if old is None else f"{old}, {value}"
        if method not in METHODS:
            response = error_response(405, f"Method not allowed: {method[:32]}")
            response.headers.append(("Allow", _ALLOW))
            await self._send(send, method, response, close=True)
            return
        limit = self.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            # Answered before reading (and before any `100 Continue`); the
            # connection closes, so the client need not send the body at all.
            message = (
                f"Request body of {int(length)} bytes exceeds the limit of {limit} bytes "
                f"({self.max_body_flag})"
            )
            await self._send(send, method, error_response(413, message), close=True)
            return
        if length is None and "transfer-encoding" not in headers:
            body: bytes | bytearray = b""  # nothing to wait for
        else:
            try:
                body = await _read_body(receive, limit)
            except _Disconnected:
                return
            except _TooLarge:
                message = f"Request body exceeds the limit of {limit} bytes ({self.max_body_flag})"
                await self._send(send, method, error_response(413, message), close=True)
                return
        request = Request(
            method=method,
            path=scope["raw_path"].decode("latin-1") or "/",
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=body,
        )
        del body  # the request holds the only reference; a handler may free it early
        await self._send(send, method, await self.dispatch(request), close=False)

    async def _send(self, send: Send, method: str, response: Response, *, close: bool) -> None:
        body = response.body
        if isinstance(body, bytes | bytearray | list):
            pieces: Iterable[bytes] = body if isinstance(body, list) else [body]
            length = sum(map(len, pieces))
        else:
            pieces, length = body, body.nbytes
        headers = [
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(length).encode()),
        ]
        if close:
            headers.append(_CLOSE)
        if self.cors:
            headers.extend(_CORS)
        for name, value in response.headers:
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if length <= SEND_SLICE:
            whole = body if isinstance(body, bytes | bytearray) else b"".join(pieces)
            await send({"type": "http.response.body", "body": whole})
            return
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, len(piece), SEND_SLICE):
                chunk = view[start : start + SEND_SLICE]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # `send` returns without yielding while the socket takes the data, so a
                # fast reader of a large answer would keep every other client waiting.
                await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | bytearray:
    """The whole body; reading stops as soon as it passes `limit`.

    Appended to one bytearray: no second copy for a join, and a large body is
    one allocation (mmap-backed in glibc), returned to the system as soon as
    the request is done or the upload is abandoned, where a list of 64 KiB
    chunks stays in the heap.
    """
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    first = message.get("body", b"")
    if len(first) > limit:
        raise _TooLarge
    if not message.get("more_body", False):
        return first
    body = bytearray(first)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            if len(body) + len(chunk) > limit:
                raise _TooLarge
            body += chunk
        if not message.get("more_body", False):
            return body


class HttpServer:
    """The REST server: `RestApp` on uvicorn, on the running event loop.

    Other parts of the server mount their endpoints with `add_route`, e.g. the
    observability helper's metrics page and `/v1/health/{live,ready}`:

        server.http.add_route("GET", "/v1/health/live", handler)
    """

    def __init__(
        self,
        *,
        max_body_bytes: int,
        timeout_s: float | None = None,
        cors: bool = False,
        limits: Limits | None = None,
        max_body_flag: str = "--max_request_bytes",
    ) -> None:
        self.limits = dataclasses.replace(limits or Limits(), max_body_bytes=max_body_bytes)
        self.app = RestApp(
            max_body_bytes=max_body_bytes,
            timeout_s=timeout_s,
            cors=cors,
            max_body_flag=max_body_flag,
        )
        self.port: int | None = None
        self._server: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def timeout_s(self) -> float | None:
        return self.app.timeout_s

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve `method path` (exact match, query string ignored) with `handler`.

        `handler(request)` is awaited on the event loop and returns a `Response`;
        a GET route also answers HEAD. Raising an exception gives a 500 JSON error.
        """
        self.app.add_route(method, path, handler)

    def set_prefix_handler(self, prefix: str, handler: Handler) -> None:
        self.app.set_prefix_handler(prefix, handler)

    async def dispatch(self, request: Request) -> Response:
        return await self.app.dispatch(request)

    @property
    def connections(self) -> int:
        """Open client connections (for tests and diagnostics)."""
        return len(self._server.server_state.connections) if self._server else 0

    # ---------------------------------------------------------------- lifecycle

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        """Bind `host:port` (OSError if it cannot) and serve on the running loop."""

        limits = dataclasses.replace(self.limits, max_connections=self.limits.connections)
        sock = _bind(host, port)
        config = uvicorn.Config(
            self.app,
            http=protocol_class(limits),
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,  # our logging setup, not uvicorn's
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=self.limits.idle_timeout_s or 2**31,  # type: ignore[arg-type]
            backlog=1024,
        )
        uvicorn_log = logging.getLogger("uvicorn.error")
        if uvicorn_log.level == logging.NOTSET:
            uvicorn_log.setLevel(logging.WARNING)  # its start/stop lines repeat ours
        self._server = _Uvicorn(config)
        self._serving = asyncio.get_running_loop().create_task(self._server.serve([sock]))
        while not self._server.started:
            if self._serving.done():
                self._serving.result()  # raises what stopped it
                raise OSError(f"HTTP server on {host}:{port} stopped during start-up")
            await asyncio.sleep(0.005)
        self.port = sock.getsockname()[1]
        _quiet_accept_errors(asyncio.get_running_loop())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; let requests being answered finish (up to `grace`), then close."""
        server, serving = self._server, self._serving
        if server is None or serving is None:
            return
        server.config.timeout_graceful_shutdown = max(grace, 0.001)  # type: ignore[assignment]
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        for connection in list(server.server_state.connections):
            connection.transport.abort()  # still receiving a request after the grace period
        self._server = self._serving = None


class _Uvicorn(uvicorn.Server):
    """uvicorn.Server without its signal handlers: SIGTERM is the model server's (drain)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP,
    # and without it small responses wait ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


_ACCEPT_LOG_INTERVAL_S = 10.0


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log accept() failures (EMFILE...) once per interval instead of once per attempt."""
    previous = loop.get_exception_handler()
    if getattr(previous, "quiets_accept_errors", False):
        return
    state = {"last": float("-inf"), "skipped": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "accept" in str(context.get("message", "")):
            now = loop.time()
            if now - state["last"] < _ACCEPT_LOG_INTERVAL_S:
                state["skipped"] += 1
                return
            skipped, state["last"], state["skipped"] = state["skipped"], now, 0
            log.warning(
                "%s: %s%s",
                context.get("message"),
                context.get("exception"),
                f" ({skipped} more since the last report)" if skipped else "",
            )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiets_accept_errors = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
