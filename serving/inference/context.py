"""One request's accounting, the same for every protocol.

A protocol adapter runs each request inside the context that
`InferenceService.observe` returns:

    async with service.observe("predict", "grpc", model_name):
        ... decode, call the service, encode ...

and that context, once for every protocol:

- tells the observer (metrics, the in-flight count the drain waits on) that
  the request started, then how it ended;
- enforces the request's time limit when it has one (REST's
  --rest_api_timeout_in_ms): past it the work is cancelled and the request
  fails with DEADLINE_EXCEEDED "Deadline Exceeded";
- gives every outcome its canonical code: a ServingError keeps its own; any
  other exception is logged with its traceback and re-raised as INTERNAL
  "Type: message"; a cancellation from outside (the client went away) is
  CANCELLED, or DEADLINE_EXCEEDED once the time limit has passed.

So what leaves the block is a ServingError (or a cancellation, which the
transport owns); adapters only map its code to their protocol's status.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from types import TracebackType
from typing import Any, Protocol

import grpc

if sys.version_info >= (3, 11):
    from asyncio import Timeout, timeout
else:  # the same context manager, backported
    from async_timeout import Timeout, timeout

from serving.errors import ServingError

log = logging.getLogger("serving.request")

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
_INTERNAL = grpc.StatusCode.INTERNAL
_UNKNOWN = grpc.StatusCode.UNKNOWN


class Observer(Protocol):
    """Per-request accounting (serving.observability's RequestObserver).

    `start` may refuse a request by raising ServingError (UNAVAILABLE while
    the server drains); a started request is always `finish`ed exactly once.
    """

    def start(self, api: str, protocol: str, model: str | None) -> Any: ...

    def finish(self, token: Any, code: grpc.StatusCode) -> None: ...


class RequestContext:
    """`async with` around one request; see the module docstring."""

    __slots__ = ("_observer", "_timer", "_token", "api", "model", "protocol", "timeout_s")

    def __init__(
        self,
        observer: Observer | None,
        api: str,
        protocol: str,
        model: str | None,
        timeout_s: float | None = None,
    ) -> None:
        self._observer = observer
        self.api = api
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s
        self._token: Any = None
        self._timer: Timeout | None = None

    async def __aenter__(self) -> RequestContext:
        observer = self._observer
        if observer is not None:
            self._token = observer.start(self.api, self.protocol, self.model)
        if self.timeout_s is not None:
            timer = timeout(self.timeout_s)
            try:
                await timer.__aenter__()
            except BaseException:
                self._finish(_INTERNAL)
                raise
            self._timer = timer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        timer = self._timer
        if timer is not None:
            try:
                await timer.__aexit__(exc_type, exc, tb)
            except asyncio.TimeoutError:  # our own limit cancelled the work (TimeoutError on 3.11+)
                self._finish(_DEADLINE_EXCEEDED)
                raise ServingError(_DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        if exc is None:
            if self._token is not None:  # the common case, spelled out: it runs per request
                self._observer.finish(self._token, _OK)  # type: ignore[union-attr]
        elif isinstance(exc, ServingError):
            self._finish(exc.code)
        elif isinstance(exc, asyncio.CancelledError):
            # Cancelled from outside: a transport's own time limit or a client gone.
            late = timer is not None and asyncio.get_running_loop().time() >= (timer.when() or 0)
            self._finish(_DEADLINE_EXCEEDED if late else _CANCELLED)
        elif isinstance(exc, Exception):
            self._finish(_INTERNAL)
            log.error("%s %s failed", self.protocol, self.api, exc_info=exc)
            raise ServingError(_INTERNAL, f"{type(exc).__name__}: {exc}") from exc
        else:  # KeyboardInterrupt, SystemExit: counted, then on their way
            self._finish(_UNKNOWN)

    def _finish(self, code: grpc.StatusCode) -> None:
        if self._token is not None:
            assert self._observer is not None
            self._observer.finish(self._token, code)
            self._token = None
