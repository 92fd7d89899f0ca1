"""Readiness: one rule behind gRPC health, REST /v1/health/ready and the logs.

Ready (gRPC SERVING, HTTP 200) once every configured model has an available
version; not ready while starting and from the moment a drain begins. Once
reached, readiness is kept when a config reload adds a model that is still
loading: every replica reads the same ConfigMap at about the same time, so
dropping readiness then would take the whole Service out at once. That
model's own health service name reports NOT_SERVING until it is available.

gRPC service names: "" (the server), each configured model's name, and
`tensorflow.serving.PredictionService` / `tensorflow.serving.ModelService`
(same as ""). A model no longer configured reports SERVICE_UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Collection

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

log = logging.getLogger("serving.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVER_ALIASES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


class Health:
    def __init__(
        self,
        configured: Callable[[], Collection[str]],
        available: Callable[[str], bool],
    ) -> None:
        self._configured = configured
        self._available = available
        self._lock = threading.Lock()
        self._started = False  # start-up finished (ports bound, config applied)
        self._reached = False  # every configured model was available at some point
        self._draining = False
        self.servicer: HealthServicer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pushed: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Future] = set()

    # --------------------------------------------------------------- state

    def models(self) -> dict[str, bool]:
        """Configured model → has an available version."""
        return {name: self._available(name) for name in sorted(self._configured())}

    def state(self) -> tuple[str, dict[str, bool]]:
        """("ready" | "starting" | "draining", per-model availability)."""
        models = self.models()
        with self._lock:
            if self._draining:
                return "draining", models
            if self._started and not self._reached and models and all(models.values()):
                self._reached = True
                log.info(
                    "ready: every configured model has an available version",
                    extra={"fields": {"event": "ready", "models": sorted(models)}},
                )
            return ("ready" if self._reached and self._started else "starting"), models

    def ready(self) -> bool:
        return self.state()[0] == "ready"

    @property
    def draining(self) -> bool:
        return self._draining

    # -------------------------------------------------------------- gRPC

    def grpc_servicer(self) -> HealthServicer:
        """Create the grpc.health.v1 servicer (call on the event loop)."""
        self.servicer = HealthServicer()
        self._loop = asyncio.get_running_loop()
        # The package starts "" as SERVING; nothing is ready yet.
        for name in SERVER_ALIASES:
            self._loop.create_task(self.servicer.set(name, NOT_SERVING))
            self._pushed[name] = NOT_SERVING
        return self.servicer

    def mark_started(self) -> None:
        """Start-up is complete; from now on readiness follows the models."""
        with self._lock:
            self._started = True
        self.changed()
        if self._loop is not None and self._task is None:
            # Config reloads and empty model folders emit no transitions: re-check too.
            self._task = self._loop.create_task(self._poll())

    def changed(self) -> None:
        """Something may have changed (any thread): refresh the gRPC statuses."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed while shutting down
            loop.call_soon_threadsafe(self._schedule_push)

    def _schedule_push(self) -> None:
        if self.servicer is not None and not self._draining:
            task = asyncio.ensure_future(self._push())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _poll(self) -> None:
        while not self._draining:
            await asyncio.sleep(0.5)
            await self._push()

    async def _push(self) -> None:
        servicer = self.servicer
        if servicer is None or self._draining:
            return
        overall, models = self.state()
        wanted = {name: SERVING if overall == "ready" else NOT_SERVING for name in SERVER_ALIASES}
        for name, available in models.items():
            if name not in wanted:
                wanted[name] = SERVING if available and not self._draining else NOT_SERVING
        for name in self._pushed:
            wanted.setdefault(name, SERVICE_UNKNOWN)
        for name, status in wanted.items():
            if self._pushed.get(name) != status:
                self._pushed[name] = status
                await servicer.set(name, status)

    async def drain(self) -> None:
        """Report NOT_SERVING everywhere, for good (SIGTERM)."""
        with self._lock:
            self._draining = True
        if self._task is not None:
            self._task.cancel()
        if self.servicer is not None:
            await self.servicer.enter_graceful_shutdown()
