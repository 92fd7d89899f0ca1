"""The REST transport in-process: the ASGI app with fake ASGI messages, then the
real uvicorn server on a loopback port of this process (no server process, no
TensorFlow)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from serving.api.rest.http import SEND_SLICE, HttpServer, Limits, Request, Response, RestApp

# ------------------------------------------------------------ ASGI app alone


def scope(method: str = "GET", path: str = "/x", headers: dict[str, str] | None = None) -> dict:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"a=1",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }


def call(
    app: RestApp, scope: dict, chunks: list[bytes] | None = None
) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """Run one request through the app: (status, headers, body, receive() calls)."""
    pending = list(chunks or [])
    sent: list[dict[str, Any]] = []
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > len(chunks or [b""]):
            raise AssertionError("read past the end of the body")
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"], calls


def echo_app(**kwargs: Any) -> tuple[RestApp, list[Request]]:
    app = RestApp(max_body_bytes=kwargs.pop("max_body_bytes", 100), **kwargs)
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response(200, b'{"n": %d}' % len(request.body), headers=[("X-Extra", "1")])

    app.add_route("GET", "/x", handler)
    app.add_route("POST", "/x", handler)
    app.set_prefix_handler("/V1/", handler)
    return app, seen


def test_routes_prefix_head_and_404() -> None:
    app, seen = echo_app()
    status, headers, body, _ = call(
        app, scope(headers={"X-A": "1", "x-a": "2", "Content-Type": "application/json"})
    )
    assert (status, body) == (200, b'{"n": 0}')
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"8"
    assert headers[b"x-extra"] == b"1"
    assert b"connection" not in headers  # kept alive
    assert seen[-1].headers["x-a"] == "1, 2" and seen[-1].query == "a=1"
    assert call(app, scope("HEAD"))[0] == 200  # a GET route answers HEAD
    assert call(app, scope("GET", "/v1/models/%64efault"))[0] == 200  # prefix, any case
    assert seen[-1].path == "/v1/models/%64efault"  # raw, still percent-encoded
    assert seen[-1].decoded_path == "/v1/models/default"
    status, _, body, _ = call(app, scope("GET", "/other"))
    assert status == 404 and json.loads(body) == {"error": "Not found: GET /other"}


def test_body_by_length_and_chunks() -> None:
    app, seen = echo_app()
    status, _, body, calls = call(
        app, scope("POST", headers={"Content-Length": "6"}), [b"abc", b"def"]
    )
    assert (status, body, calls, seen[-1].body) == (200, b'{"n": 6}', 2, b"abcdef")


class Generated:
    """A streamed body: its size up front, its bytes made while it is sent."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.nbytes = sum(map(len, parts))
        self.made = 0

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            self.made += 1
            yield part


def respond(body: bytes | list[bytes] | Generated) -> tuple[dict, list[dict], list[int]]:
    """Send `body` as a response: the start message, the body messages, and how many
    of a generated body's parts were made when each body message went out."""
    app = RestApp(max_body_bytes=100)
    sent: list[dict[str, Any]] = []
    made: list[int] = []

    async def handler(request: Request) -> Response:
        return Response(200, body)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and isinstance(body, Generated):
            made.append(body.made)
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    app.add_route("GET", "/x", handler)
    asyncio.run(app(scope(), receive, send))
    return sent[0], sent[1:], made


def test_large_and_streamed_bodies_go_out_in_slices_after_their_length() -> None:
    big = [b"a" * (SEND_SLICE + 5), b"", b"b" * 3, b"c" * (2 * SEND_SLICE)]
    for body in (big, Generated(big), Generated([b"x", b"yz"]), b"z" * (SEND_SLICE + 1)):
        start, messages, made = respond(body)
        expected = body if isinstance(body, bytes) else b"".join(body)
        assert b"".join(bytes(m["body"]) for m in messages) == expected
        assert start["headers"][1] == (b"content-length", str(len(expected)).encode())
        assert all(len(m["body"]) <= SEND_SLICE for m in messages)
        assert messages[-1].get("more_body", False) is False
        if isinstance(body, Generated) and len(expected) > SEND_SLICE:
            assert made[0] == 1  # the first slice went out before the rest was made


def test_other_tasks_run_between_the_slices_of_a_large_answer() -> None:
    app = RestApp(max_body_bytes=100)
    ticks = 0
    seen: list[int] = []

    async def handler(request: Request) -> Response:
        return Response(200, [b"a" * (4 * SEND_SLICE)])

    async def send(message: dict[str, Any]) -> None:
        seen.append(ticks)  # never blocks, as when the socket takes everything

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def main() -> None:
        nonlocal ticks
        sending = asyncio.ensure_future(app(scope(), receive, send))
        while not sending.done():
            ticks += 1
            await asyncio.sleep(0)

    app.add_route("GET", "/x", handler)
    asyncio.run(main())
    body_ticks = seen[1:-1]
    assert len(body_ticks) == 4 and body_ticks == sorted(set(body_ticks))


def test_declared_length_over_the_limit_is_413_without_reading() -> None:
    app, seen = echo_app()
    status, headers, body, calls = call(
        app, scope("POST", headers={"Content-Length": str(2**63)}), [b"x" * 50]
    )
    assert status == 413 and calls == 0 and not seen
    assert headers[b"connection"] == b"close"
    assert json.loads(body)["error"] == (
        f"Request body of {2**63} bytes exceeds the limit of 100 bytes (--max_request_bytes)"
    )


def test_chunked_body_is_cut_off_at_the_limit() -> None:
    app, seen = echo_app()
    chunks = [b"x" * 60, b"x" * 60, b"x" * 60, b"x" * 60]
    status, headers, body, calls = call(
        app, scope("POST", headers={"Transfer-Encoding": "chunked"}), chunks
    )
    assert status == 413 and calls == 2 and not seen  # stopped reading at 120 > 100
    assert headers[b"connection"] == b"close"
    assert "limit of 100 bytes" in json.loads(body)["error"]


def test_time_limit_errors_and_cors() -> None:
    app = RestApp(max_body_bytes=100, timeout_s=0.05, cors=True)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(5)
        return Response(200)

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app.add_route("GET", "/slow", slow)
    app.add_route("GET", "/broken", broken)
    started = time.monotonic()
    status, headers, body, _ = call(app, scope("GET", "/slow"))
    assert time.monotonic() - started < 2
    assert status == 504 and body == b'{\n    "error": "Deadline Exceeded"\n}'
    assert headers[b"access-control-allow-origin"] == b"*"
    assert headers[b"access-control-allow-methods"] == b"POST, GET"
    assert headers[b"access-control-allow-headers"] == b"Content-Type"
    status, _, body, _ = call(app, scope("GET", "/broken"))
    assert status == 500 and "Internal error" in json.loads(body)["error"]


def test_client_gone_while_sending_the_body_gets_nothing() -> None:
    app, seen = echo_app()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope("POST", headers={"Content-Length": "5"}), receive, send))
    assert not sent and not seen


# ---------------------------------------------------- uvicorn, in-process

LIMITS = Limits(idle_timeout_s=0.5, read_timeout_s=0.5, max_connections=20)


def serve(
    test: Callable[[HttpServer], Awaitable[None]], limits: Limits = LIMITS, body_limit: int = 1000
) -> None:
    """Run `test(server)` against a real server on 127.0.0.1 in this process."""

    async def main() -> None:
        server = HttpServer(max_body_bytes=body_limit, timeout_s=5.0, limits=limits)

        async def handler(request: Request) -> Response:
            if request.path == "/slow":
                await asyncio.sleep(0.5)
            return Response(200, b'{"n": %d}' % len(request.body))

        for method in ("GET", "POST"):
            server.add_route(method, "/x", handler)
            server.add_route(method, "/slow", handler)
        await server.start(0, "127.0.0.1")
        try:
            await asyncio.wait_for(test(server), 30)
        finally:
            await server.stop(1.0)

    asyncio.run(main())


async def connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert server.port is not None
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (ConnectionResetError counts as closed)."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(
        next(
            line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
        ).split(b":")[1]
    )
    return status, await reader.readexactly(length)


GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    async def test(server: HttpServer) -> None:
        silent = await connect(server)  # never sends a byte
        used = await connect(server)
        used[1].write(GET)
        assert await answer(used[0]) == (200, b'{"n": 0}')
        started = time.monotonic()
        assert await read_all(silent[0]) == b""
        assert await read_all(used[0]) == b""  # closed, nothing more
        assert 0.3 < time.monotonic() - started < 3
        assert server.connections == 0

    serve(test)


def test_slow_request_gets_408_after_the_read_timeout() -> None:
    async def test(server: HttpServer) -> None:
        reader, writer = await connect(server)
        started = time.monotonic()
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        for _ in range(4):  # a byte every 0.2 s keeps it from being idle
            await asyncio.sleep(0.2)
            if not writer.is_closing():
                writer.write(b"c")
        data = await read_all(reader)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert b"Request not received within 0.5 s" in data
        assert time.monotonic() - started < 2

    serve(test)


def test_connections_over_the_cap_are_refused_and_others_keep_working() -> None:
    limits = Limits(idle_timeout_s=30, read_timeout_s=30, max_connections=5)

    async def test(server: HttpServer) -> None:
        held = [await connect(server) for _ in range(5)]
        await asyncio.sleep(0.1)
        reader, writer = await connect(server)
        writer.write(GET)
        data = await read_all(reader)
        assert data.startswith(b"HTTP/1.1 503 ") and b"Too many connections" in data
        for reader, writer in held:  # the admitted ones still work
            writer.write(GET)
            assert await answer(reader) == (200, b'{"n": 0}')
        held[0][1].close()
        await asyncio.sleep(0.1)
        reader, writer = await connect(server)  # room again
        writer.write(GET)
        assert await answer(reader) == (200, b'{"n": 0}')

    serve(test, limits)


def test_large_declared_body_gets_413_at_once_and_lingers() -> None:
    async def test(server: HttpServer) -> None:
        reader, writer = await connect(server)
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: 9223372036854775807\r\n\r\n"
        )
        status, body = await answer(reader)
        assert status == 413 and b"9223372036854775807 bytes" in body
        # No `100 Continue` was sent, and the server shut its side; a client
        # that keeps uploading is drained, not reset, so it could read the 413.
        for _ in range(20):
            writer.write(b"x" * 65536)
            await writer.drain()
        assert await read_all(reader) == b""

    serve(test)


def test_expect_100_continue_then_body() -> None:
    async def test(server: HttpServer) -> None:
        reader, writer = await connect(server)
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        assert await answer(reader) == (200, b'{"n": 3}')

    serve(test)


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"BLAH\x00 / HTTP/1.1\r\n\r\n", 400, "Malformed HTTP request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "Request URL over 65536 bytes"),
        (b"GET /x HTTP/1.1\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n", 431, "Request headers over"),
        (
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            400,
            "Chunk size overflow",
        ),
        (  # a 2^63-byte chunk: cut off at the body limit
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000000\r\n"
            + b"x" * 2000,
            413,
            "Request body exceeds the limit of 1000 bytes",
        ),
    ],
)
def test_unparseable_requests_get_json_errors(
    request_bytes: bytes, status: int, message: str
) -> None:
    async def test(server: HttpServer) -> None:
        reader, writer = await connect(server)
        writer.write(request_bytes)
        data = await read_all(reader)
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert b"content-type: application/json" in head.lower()
        assert message in json.loads(body)["error"]

    serve(test)


def test_pipelined_answers_in_order_then_a_half_close_is_answered() -> None:
    async def test(server: HttpServer) -> None:
        reader, writer = await connect(server)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
            + b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab"
        )
        writer.write_eof()  # shutdown(SHUT_WR) right after the requests
        data = await read_all(reader)
        assert data.count(b"HTTP/1.1 200 OK") == 2
        assert data.index(b'{"n": 0}') < data.index(b'{"n": 2}')

    serve(test)


def test_accepted_sockets_have_nodelay() -> None:
    async def test(server: HttpServer) -> None:
        reader, writer = await connect(server)
        writer.write(GET)
        await answer(reader)
        assert server._server is not None
        (connection,) = server._server.server_state.connections
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    serve(test)


def test_stop_lets_a_running_request_finish_and_closes_idle_ones() -> None:
    async def main() -> None:
        server = HttpServer(max_body_bytes=100, limits=LIMITS)

        async def slow(request: Request) -> Response:
            await asyncio.sleep(0.3)
            return Response(200, b"{}")

        server.add_route("GET", "/slow", slow)
        await server.start(0, "127.0.0.1")
        idle = await connect(server)
        busy = await connect(server)
        busy[1].write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.05)
        await server.stop(2.0)
        assert await read_all(idle[0]) == b""
        data = await read_all(busy[0])
        assert data.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in data.lower()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)

    asyncio.run(main())


def test_default_connection_cap_stays_below_the_file_limit(monkeypatch) -> None:
    import resource

    from serving.api.rest import connections

    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (1024, 4096))
    assert Limits().connections == 512
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (1 << 20, 1 << 20))
    assert connections.default_max_connections() == 10_000
    assert Limits(max_connections=7).connections == 7


def test_accept_errors_are_logged_at_most_once_per_interval(caplog) -> None:
    async def test(server: HttpServer) -> None:
        loop = asyncio.get_running_loop()
        handler = loop.get_exception_handler()
        assert handler is not None
        context = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(24, "Too many open files"),
        }
        for _ in range(100):
            handler(loop, context)

    with caplog.at_level("WARNING", logger="serving.rest"):
        serve(test)
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(lines) == 1 and "Too many open files" in lines[0].getMessage()
