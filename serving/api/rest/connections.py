"""Per-connection limits on top of uvicorn's httptools protocol.

uvicorn's protocol parses, pipelines and writes; what a public-facing model
server also needs, and uvicorn does not do, is added here:

- a connection cap: past `Limits.max_connections` a new connection gets a 503
  JSON answer and is closed at once (no parser work, no task);
- the idle timeout from the first byte on, not only between requests, so a
  connection that never sends anything is closed too;
- a read timeout: a request (headers and body) must arrive within
  `Limits.read_timeout_s` of its first byte (slow senders get 408);
- a header limit: a URL over `Limits.max_header_bytes` gets 414, headers 431;
- JSON errors for requests that do not parse (400), in TF Serving's layout;
- a request followed by a half-close (`shutdown(SHUT_WR)`) is still answered;
- lingering close: when an answer ends the connection while the client is
  still sending (413, a parse error), the write side is shut and the rest of
  the upload is read and dropped for a while, so the client reads the answer
  instead of a connection reset.

The subclass relies on uvicorn's protocol attributes (`cycle`, `pipeline`,
`flow`, `transport`, `timeout_keep_alive_task`); tests/unit/api/rest covers
each path so an upgrade that changes them fails there first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.api.rest import jsonfmt

log = logging.getLogger("serving.rest")


@dataclass(frozen=True)
class Limits:
    """What one client may take: bytes, time and connections.

    `max_connections` 0 means "derived from the process's file limit"
    (`default_max_connections`); timeouts are seconds, 0 = none.
    """

    max_body_bytes: int = 2**31 - 1
    max_header_bytes: int = 64 * 1024
    idle_timeout_s: float = 75.0
    read_timeout_s: float = 60.0
    max_connections: int = 0

    @property
    def connections(self) -> int:
        return self.max_connections or default_max_connections()


def default_max_connections() -> int:
    """Half the open-file limit (the rest: gRPC, model files, TensorFlow), at most 10,000.

    Staying below the limit means excess clients are refused by us, cheaply,
    instead of accept() failing with EMFILE for everyone.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, min(10_000, soft // 2))


# After an answer that ends a connection mid-upload: keep draining input for
# up to this long (nginx's lingering_time is 30 s, lingering_timeout 5 s).
LINGER_SECONDS = 5.0
_REFUSED_LOG_INTERVAL_S = 10.0
_READ_SIZE = 64 * 1024  # per recv(); below glibc's default mmap threshold
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def protocol_class(limits: Limits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to `limits`."""
    return type("BoundHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def error_bytes(status: int, message: str) -> bytes:
    """A whole `Connection: close` response, for answers written outside a request cycle."""
    body = jsonfmt.error_body(message)
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Refusals:
    """Counts refused connections; logs at most once per interval."""

    last = float("-inf")
    skipped = 0

    @classmethod
    def note(cls, now: float, limit: int) -> None:
        if now - cls.last < _REFUSED_LOG_INTERVAL_S:
            cls.skipped += 1
            return
        more = f" ({cls.skipped} more since the last report)" if cls.skipped else ""
        cls.last, cls.skipped = now, 0
        log.warning("REST connection refused: %d open (--rest_api_max_connections)%s", limit, more)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._reading = False  # between a request's first byte and its end
        self._read_timer: asyncio.TimerHandle | None = None
        self._rejection: tuple[int, str] | None = None  # set by a parser callback
        self._pending_error: tuple[int, str] | None = None  # after the earlier answers
        self._discarding = False  # answered and closing: input is dropped
        self._close_when_answered = False  # the client half-closed
        self.held: _CycleTransport | None = None  # a response head waiting for its body
        self._chunk_started = False  # the parser read a chunk-size line in this feed
        self._chunk_size = _chunk_size_pattern(self.limits.max_body_bytes)

    # ------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if getattr(transport, "max_size", 0) > _READ_SIZE:
            # asyncio reads into a fresh bytes object of max_size (256 KiB) per
            # read: above malloc's mmap threshold, each read could cost an
            # mmap, mremap and munmap (seen under load with strace).
            transport.max_size = _READ_SIZE  # type: ignore[attr-defined]
        limit = self.limits.max_connections
        if limit and len(self.connections) > limit:
            _Refusals.note(self.loop.time(), limit)
            self._discarding = True
            self.transport.write(error_bytes(503, "Too many connections; try again later"))
            self.transport.close()
            return
        if self.limits.idle_timeout_s:
            # uvicorn arms its keep-alive timer only after a response; a
            # connection that never sends a request is idle too.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.limits.idle_timeout_s, self.timeout_keep_alive_handler
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        try:
            self._chunk_started = False
            self.parser.feed_data(data)
            if self._chunk_started:
                self._check_chunk_sizes(data)
            if self._reading and self._read_timer is None and self.limits.read_timeout_s:
                # Armed only when a request spans reads: most arrive in one.
                self._read_timer = self.loop.call_later(self.limits.read_timeout_s, self._read_late)
        except httptools.HttpParserUpgrade:
            # No upgrades (websockets) here: answer the request as plain
            # HTTP, then close, since what follows is not HTTP/1.1.
            self._discarding = True
            if self.cycle is not None:
                self.cycle.keep_alive = False
        except httptools.HttpParserError as exc:
            status, message = self._rejection or (400, f"Malformed HTTP request: {exc}")
            self._fail(status, message)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client shut its write side: answer what it asked, then close."""
        cycle = self.cycle
        if self._discarding or cycle is None or cycle.response_complete or cycle.more_body:
            return None  # nothing complete to answer: the transport closes
        self._close_when_answered = True
        return True  # keep the write side open

    # ------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._reading = True

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._rejection = (414, f"Request URL over {self.limits.max_header_bytes} bytes")
            raise ValueError("URL too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            limit = self.limits.max_header_bytes
            self._rejection = (431, f"Request headers over {limit} bytes")
            raise ValueError("headers too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The cycle closes through us, so an answer that ends the connection
        # mid-upload lingers instead of resetting it.
        self.cycle.transport = _CycleTransport(self)  # type: ignore[assignment]

    def on_chunk_header(self) -> None:
        self._chunk_started = True

    def _check_chunk_sizes(self, data: bytes) -> None:
        """A chunk that declares more than the body limit is refused at once.

        The parser does not report a chunk's size, and would wait for all of
        it (up to 2^64 - 1 bytes) before the body limit applies; so the data
        in which it read a chunk-size line is searched for one over the limit.
        A match needs a CRLF-delimited run of hex digits as long as the
        limit's own and a value over it, which JSON payload rarely has.
        """
        for match in self._chunk_size.finditer(data):
            size = int(match.group(1), 16)
            if size > self.limits.max_body_bytes:
                self._fail(
                    413,
                    f"Request body exceeds the limit of {self.limits.max_body_bytes} bytes "
                    f"(a chunk of {size} bytes)",
                )
                return

    def on_message_complete(self) -> None:
        self._reading = False
        self._cancel_read_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.held is not None:
            self.held.flush()
        idle = not self.pipeline  # the answer just sent was the last one owed
        super().on_response_complete()
        if not idle or self.transport.is_closing():
            return
        if self._pending_error is not None:
            self._unset_keepalive_if_required()
            self._answer_and_close(*self._pending_error)
        elif self._close_when_answered:
            self.transport.close()

    def shutdown(self) -> None:
        """Server stopping: a connection that is only draining input closes now."""
        if self._discarding:
            self.transport.close()
        else:
            super().shutdown()

    # ----------------------------------------------------------------- errors

    def _read_late(self) -> None:
        self._read_timer = None
        seconds = self.limits.read_timeout_s
        self._fail(408, f"Request not received within {seconds:g} s")

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be served: answer it in turn, then close."""
        self._cancel_read_timer()
        self._discarding = True
        last = self.cycle  # the newest request with complete headers
        if last is None or last.response_complete:
            self._answer_and_close(status, message)
            return
        if last.more_body:  # the failing request is `last` itself (its body broke off)
            if self.pipeline and self.pipeline[0][0] is last:
                self.pipeline.popleft()  # queued: drop it, answer after the others
            else:  # being handled: its handler sees the client gone
                last.disconnected = True
                last.message_event.set()
                self._answer_and_close(status, message)
                return
        self._pending_error = (status, message)

    def _answer_and_close(self, status: int, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(error_bytes(status, message))
            self.linger()

    def linger(self) -> None:
        """Shut the write side, drop further input for a while, then close."""
        self._discarding = True
        self._cancel_read_timer()
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None


@functools.lru_cache(maxsize=8)
def _chunk_size_pattern(limit: int) -> re.Pattern[bytes]:
    """A chunk-size line after CRLF with at least as many hex digits as `limit` has
    (at most 20: the parser refuses longer ones, and a longer run is payload)."""
    digits = len(f"{limit:x}")
    return re.compile(rb"(?:\A|\r\n)([0-9a-fA-F]{%d,20})[ \t]*(?:;|\r\n)" % digits)


class _CycleTransport:
    """What one request cycle writes through.

    Closing mid-upload lingers (see `LimitedHttpToolsProtocol.linger`). The
    response head is held until the body follows, so a small response leaves
    in one send() (one segment, one client wake-up) instead of uvicorn's two.
    """

    __slots__ = ("_cycle", "_head", "_head_seen", "_protocol")

    def __init__(self, protocol: LimitedHttpToolsProtocol) -> None:
        self._protocol = protocol
        self._cycle = protocol.cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
            self._protocol.held = None
        elif self._cycle.response_started and not self._head_seen:
            # The cycle writes the head first, then the body; `100 Continue`
            # (written before the response starts) passes straight through.
            self._head_seen = True
            self._head = data
            self._protocol.held = self
            return
        self._protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol.transport.is_closing()

    def close(self) -> None:
        self.flush()
        protocol = self._protocol
        cycle = protocol.cycle
        if cycle is not None and cycle.more_body and not protocol.transport.is_closing():
            protocol.linger()  # the client is still sending this request's body
        else:
            protocol.transport.close()

    def flush(self) -> None:
        """Write a held head whose body never came (HEAD, an empty body)."""
        self._protocol.held = None
        if self._head is not None:
            head, self._head = self._head, None
            self._protocol.transport.write(head)
