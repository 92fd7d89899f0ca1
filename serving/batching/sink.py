"""What batching reports, and to whom: a Protocol the observability layer satisfies.

Batching sits below observability, so it names only this interface; the
server hands it `serving.observability.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class BatchMetrics(Protocol):
    def set_queue_depth(self, model: str, signature: str, depth: int) -> None:
        """Requests now waiting in the (model, signature) queue."""

    def observe_queue_wait(self, model: str, signature: str, seconds: float) -> None:
        """A request left the queue after `seconds` (once per request)."""

    def observe_batch(
        self, model: str, signature: str, size: int, padded_size: int | None = None
    ) -> None:
        """One batch ran: `size` real rows, padded to `padded_size` (if padded)."""

    def alone_recorder(self, model: str, signature: str) -> Callable[[float], None]:
        """What to call with the rows of a request that ran on the event loop as an
        unpadded batch of its own with no queue wait (once per request, on the
        event loop thread). Asked once per queue."""
        ...


class NoMetrics:
    """Reports nothing (batching used without a server, as in tests)."""

    def set_queue_depth(self, model: str, signature: str, depth: int) -> None:
        pass

    def observe_queue_wait(self, model: str, signature: str, seconds: float) -> None:
        pass

    def observe_batch(
        self, model: str, signature: str, size: int, padded_size: int | None = None
    ) -> None:
        pass

    def alone_recorder(self, model: str, signature: str) -> Callable[[float], None]:
        return _ignore


def _ignore(rows: float) -> None:
    pass
