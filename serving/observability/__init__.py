"""Metrics, health, probes, logs and the SIGTERM drain, wired into ModelServer.

`Observability` is the one object the server talks to:

    obs = Observability(options)                     # before the manager
    manager = ServableManager(obs.wrap_loader(load), on_transition=obs.on_transition, ...)
    runner = obs.wrap_runner(runner)
    obs.bind(configured_models, manager)             # once the core exists
    obs.add_grpc_services(grpc_server)               # health + reflection
    http.add_route(... obs.endpoints.routes() ...)   # probes/metrics on the REST port
    await obs.started(server)                        # start-up line, readiness
    await obs.drain(...)                             # SIGTERM

See docs/observability.md for every metric and endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as _Tally
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.config.model_config import ServerModels
from serving.config.text_proto import read_text_proto
from serving.core import ServerCore
from serving.flags import ServerOptions
from serving.inference.runner import Runner
from serving.manager.manager import ServableManager
from serving.manager.state import Transition
from serving.observability import logs
from serving.observability import metrics as _metrics
from serving.observability.health import Health
from serving.observability.http import DEFAULT_METRICS_PATH, Endpoints
from serving.observability.observer import ObservedRunner, RequestObserver

log = logging.getLogger("serving")

__all__ = ["Observability", "read_monitoring_config"]

# After the last request finished: time to flush responses before cutting streams.
_FLUSH_SECONDS = 1.0
# How long the gRPC side must stay idle before the drain stops it.
_QUIET_SECONDS = 0.25

T = TypeVar("T")


class ServerHandle(Protocol):
    """What `started` reads of the server (ModelServer satisfies it)."""

    @property
    def grpc_addresses(self) -> Sequence[str]: ...

    @property
    def core(self) -> ServerCore: ...


class IdleWaiter(Protocol):
    """Calls a protocol adapter holds, including those not yet observed."""

    count: int

    async def wait_idle(self, timeout: float) -> bool: ...


class StoppableServer(Protocol):
    """The REST server, as the drain stops it."""

    async def stop(self, grace: float) -> None: ...


GRPC_SERVICES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
)


def read_monitoring_config(path: str) -> str | None:
    """The metrics path the MonitoringConfig file asks for, or None if disabled."""
    if not path:
        return None
    from serving.protos import MonitoringConfig

    config = read_text_proto(path, MonitoringConfig())  # TextProtoError names the file
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    path = prometheus.path or DEFAULT_METRICS_PATH
    return path if path.startswith("/") else "/" + path


class Observability:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.metrics = _metrics.get()
        enabled = read_monitoring_config(options.monitoring_config_file)
        # TF Serving serves the page on the REST port only.
        self.metrics_path = enabled if options.rest_api_port else None
        self._models_source: Callable[[], ServerModels] | None = None
        self._models_seen: ServerModels | None = None
        self._names: frozenset[str] = frozenset()
        self._manager: ServableManager[Any] | None = None
        self.observer = RequestObserver(self.metrics, self.configured_models)
        self.health = Health(self.configured_models, self._has_available)
        self.endpoints = Endpoints(self.health, self.metrics, self.metrics_path)

    # ----------------------------------------------------------------- wiring

    def bind(self, models: Callable[[], ServerModels], manager: ServableManager[Any]) -> None:
        """`models()` returns the current ServerModels; `manager` the ServableManager."""
        self._models_source = models
        self._manager = manager
        self.metrics.set_version_states(self._version_states)

    def configured_models(self) -> Collection[str]:
        """Names in the current model config (cached per config object)."""
        if self._models_source is None:
            return self._names
        current = self._models_source()
        if current is not self._models_seen:
            self._names = frozenset(m.name for m in current.models)
            self._models_seen = current
        return self._names

    def _has_available(self, name: str) -> bool:
        return bool(self._manager is not None and self._manager.available_versions(name))

    def _version_states(self) -> list[tuple[str, str, int]]:
        manager = self._manager
        if manager is None:
            return []
        rows: list[tuple[str, str, int]] = []
        for name in manager.model_names():
            try:
                statuses = manager.status(name)
            except Exception:  # a model with no versions yet
                continue
            tally = _Tally(s.state.name for s in statuses)
            rows.extend((name, state, count) for state, count in sorted(tally.items()))
        return rows

    def wrap_loader(self, loader: Callable[[str, int, str], T]) -> Callable[[str, int, str], T]:
        """Time every load attempt (retries too), as TF's loader metrics do."""

        def load(name: str, version: int, path: str) -> T:
            started = time.monotonic()
            try:
                servable = loader(name, version, path)
            except BaseException:
                self.metrics.observe_load(name, path, time.monotonic() - started, ok=False)
                raise
            self.metrics.observe_load(name, path, time.monotonic() - started, ok=True)
            return servable

        return load

    def wrap_runner(self, runner: Runner) -> ObservedRunner:
        return ObservedRunner(runner, self.metrics)

    def on_transition(self, event: Transition) -> None:
        """Manager listener: log line, unload count, health refresh."""
        logs.log_transition(event)
        if event.unload_finished:
            self.metrics.observe_unload(event.model)
        self.health.changed()

    def add_grpc_services(self, server: grpc.aio.Server) -> None:
        """grpc.health.v1.Health and server reflection (`grpcurl list`)."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health.grpc_servicer(), server)
        names = (
            *GRPC_SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)

    # -------------------------------------------------------------- lifecycle

    async def started(self, server: ServerHandle) -> None:
        """After the APIs are up: start-up line, readiness tracking."""
        opts = self.options
        batching = "off"
        if getattr(opts, "enable_batching", False):
            batching = "on" + (
                f" ({opts.batching_parameters_file})" if opts.batching_parameters_file else ""
            )
        models = [(m.name, m.base_path) for m in server.core.models.models]
        logs.log_startup(
            grpc_addresses=server.grpc_addresses,
            rest_port=opts.rest_api_port,
            models=models,
            devices=logs.visible_devices(),
            batching=batching,
            metrics_path=self.metrics_path,
        )
        self.health.mark_started()

    async def drain(
        self,
        grpc_server: grpc.aio.Server | None,
        grace: float,
        http: StoppableServer | None = None,
        grpc_calls: IdleWaiter | None = None,
    ) -> bool:
        """SIGTERM: NOT_SERVING, refuse new work, let in-flight requests finish.

        The gRPC server keeps taking calls while in-flight ones finish, and
        answers new ones UNAVAILABLE (RequestObserver.start): stopping it first
        would leave calls it had already received, but not yet handed to us,
        to end CANCELLED (not retryable) when it finally stops. Once the last
        accepted call is done (`grpc_calls` also counts calls still being
        parsed), the server stops. The REST port likewise stays open so probes
        can read the 503 while API requests get 503 UNAVAILABLE.
        Returns True if every in-flight request finished within `grace` seconds.
        """
        inflight = self.observer.inflight
        log.info(
            "draining: NOT_SERVING, %d request(s) in flight, waiting up to %.0fs",
            inflight,
            grace,
            extra={"fields": {"event": "drain", "inflight": inflight, "timeout": grace}},
        )
        self.observer.draining = True
        await self.health.drain()
        started = time.monotonic()
        finished = await self.observer.wait_idle(grace)
        if grpc_calls is not None:
            # A call the gRPC core has received is counted only once the event
            # loop reaches its handler: idleness must last a moment before
            # stop(), or such a call (likely on a busy host) ends CANCELLED.
            while True:
                left_s = grace - (time.monotonic() - started)
                if not await grpc_calls.wait_idle(left_s):
                    finished = False
                    break
                await asyncio.sleep(max(min(_QUIET_SECONDS, left_s), 0.0))
                if grpc_calls.count == 0 or time.monotonic() - started >= grace:
                    break
        if grpc_server is not None:
            # Open health Watch streams would hold stop() for its whole grace
            # period: it gets a moment to send the last responses, then is cut short.
            stopping = asyncio.ensure_future(grpc_server.stop(_FLUSH_SECONDS))
            await asyncio.wait({stopping}, timeout=_FLUSH_SECONDS)
            if not stopping.done():
                await grpc_server.stop(0)
            await stopping
        if http is not None:
            await http.stop(_FLUSH_SECONDS)
        left = self.observer.inflight
        log.log(
            logging.INFO if finished else logging.WARNING,
            "drained in %.2fs%s",
            time.monotonic() - started,
            "" if finished else f"; {left} request(s) still running were cancelled",
            extra={"fields": {"event": "drained", "complete": finished, "cancelled": left}},
        )
        return finished
