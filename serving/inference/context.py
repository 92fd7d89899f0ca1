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
import math
import sys
import weakref
from types import TracebackType
from typing import Any, Protocol

import grpc

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

    __slots__ = (
        "_deadline",
        "_deadlines",
        "_expired",
        "_observer",
        "_task",
        "_token",
        "api",
        "model",
        "protocol",
        "timeout_s",
    )

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
        # The time limit: an entry in the loop's `_Deadlines`, which cancels
        # the request's task when it passes. Not asyncio.timeout nor a timer
        # per request: both measured as a large share of a small REST
        # request's cost in the request path.
        self._deadlines: _Deadlines | None = None
        self._deadline = 0.0  # loop time
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    async def __aenter__(self) -> RequestContext:
        observer = self._observer
        if observer is not None:
            self._token = observer.start(self.api, self.protocol, self.model)
        if self.timeout_s is not None:
            task = asyncio.current_task()
            if task is None:
                self._finish(_INTERNAL)
                raise RuntimeError("a request's time limit needs a running task")
            self._task = task
            deadlines = self._deadlines = _Deadlines.of(task.get_loop())
            deadlines.add(self, self.timeout_s)
        return self

    def expire(self) -> None:
        """The time limit passed (called by `_Deadlines`)."""
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        deadlines = self._deadlines
        if deadlines is not None:
            deadlines.remove(self)
            if self._expired:
                # Our own limit cancelled the work: take that cancellation back
                # (it was ours, not the caller's), and count the request once.
                expired_here = isinstance(exc, asyncio.CancelledError)
                if sys.version_info >= (3, 11) and self._task is not None:
                    self._task.uncancel()
                if expired_here:
                    self._finish(_DEADLINE_EXCEEDED)
                    raise ServingError(_DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        if exc is None:
            if self._token is not None:  # the common case, spelled out: it runs per request
                self._observer.finish(self._token, _OK)  # type: ignore[union-attr]
        elif isinstance(exc, ServingError):
            self._finish(exc.code)
        elif isinstance(exc, asyncio.CancelledError):
            # Cancelled from outside: a transport's own time limit or a client gone.
            late = deadlines is not None and deadlines.loop.time() >= self._deadline
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


class _Deadlines:
    """The time limits of one loop's requests in flight, behind one timer.

    A request adds and removes a dict entry; the timer is set for the earliest
    deadline only, and when it fires it cancels what has expired and sets
    itself for the next. With a fixed limit (REST's) each new deadline comes
    after those already here, so requests that finish in time never touch
    the timer at all.
    """

    __slots__ = ("_entries", "_handle", "_loop", "_next")

    # Loops are held weakly (a closed loop, e.g. a test's, must be freed).
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
        weakref.WeakKeyDictionary()
    )
    _last: _Deadlines | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._entries: set[RequestContext] = set()  # each holds its own `_deadline`
        self._handle: asyncio.TimerHandle | None = None
        self._next = math.inf

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None  # only used by requests running on it
        return loop

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Deadlines:
        last = cls._last
        if last is not None and last._loop() is loop:
            return last
        found = cls._by_loop.get(loop)
        if found is None:
            found = cls._by_loop[loop] = cls(loop)
        cls._last = found
        return found

    def add(self, context: RequestContext, timeout_s: float) -> None:
        when = context._deadline = self.loop.time() + timeout_s
        self._entries.add(context)
        if when < self._next:
            self._arm(when)

    def remove(self, context: RequestContext) -> None:
        self._entries.discard(context)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._next = when
        self._handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._next = math.inf
        now = self.loop.time()
        entries = self._entries
        for context in [c for c in entries if c._deadline <= now]:
            entries.discard(context)
            context.expire()
        if entries:
            self._arm(min(c._deadline for c in entries))
