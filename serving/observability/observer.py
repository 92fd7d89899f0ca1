"""Per-request accounting shared by the gRPC and REST adapters.

Protocol adapters call, around every request:

    token = observer.start(api, protocol, request_or_model_name)
    ... handle ...
    observer.finish(token, grpc.StatusCode)

`start` validates the model name against the configured models (an unknown
name is counted without its name, so clients cannot create series) and puts
the call in a context variable. The version and signature are only known
once the inference layer has picked a servable: `ObservedRunner`, which
wraps the runner, fills them in from the servable it is handed and times
the model run itself. The adapters therefore need no knowledge of metrics,
and the inference layer none of protocols.

The observer also counts in-flight requests, which the SIGTERM drain waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from serving.errors import ServingError
from serving.inference.runner import Runner
from serving.observability.metrics import TFS_API, Metrics
from serving.servables.base import Servable
from serving.servables.signature import Signature

# APIs whose requests carry examples (TF Serving's request_example_counts).
_EXAMPLE_APIS = frozenset({"classify", "regress", "multi_inference"})
_MULTI_PREFIX = "\x00multi:"


@dataclass(slots=True)
class Call:
    api: str
    protocol: str
    model: str  # a configured model name, or "" when none/unknown
    started: float
    version: str = ""
    signature: str = ""
    reset: contextvars.Token | None = None


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "model_server_call", default=None
)


def _request_model(request: object) -> str | None:
    """The model a protobuf request names (MultiInference: its first task's)."""
    spec = getattr(request, "model_spec", None)
    if spec is not None:
        return spec.name
    tasks = getattr(request, "tasks", None)
    if tasks:
        return tasks[0].model_spec.name
    return None


class RequestObserver:
    def __init__(self, metrics: Metrics, configured: Callable[[], Collection[str]]) -> None:
        self._metrics = metrics
        self._configured = configured
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Set by the drain: new requests are refused (UNAVAILABLE / HTTP 503).
        self.draining = False

    @property
    def inflight(self) -> int:
        return self._inflight

    def start(self, api: str, protocol: str, request: object = None) -> Call:
        """Begin accounting for one request.

        Raises ServingError(UNAVAILABLE) while the server drains; the adapter
        reports it like any other error (nothing to `finish`).
        """
        if self.draining:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
        name = request if isinstance(request, str) or request is None else _request_model(request)
        model = ""
        if name:
            if name in self._configured():
                model = name
            else:
                self._metrics.c_unknown_model(protocol).inc()
        call = Call(api, protocol, model, time.perf_counter())
        call.reset = _current.set(call)
        self._inflight += 1
        self._idle.clear()
        self._metrics.c_inflight(protocol).inc()
        return call

    def finish(self, call: Call | None, code: grpc.StatusCode) -> None:
        if call is None:
            return
        elapsed = time.perf_counter() - call.started
        m = self._metrics
        if call.reset is not None:
            # ValueError: finished in another context; nothing to restore there.
            with contextlib.suppress(ValueError):
                _current.reset(call.reset)
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
        m.c_inflight(call.protocol).dec()
        if not call.model and call.api != "reload_config":
            return  # unknown or missing model name: no per-model series
        m.c_requests(
            call.model, call.version, call.signature, call.api, call.protocol, code.name
        ).inc()
        tfs_api = TFS_API.get(call.api)
        if tfs_api is not None:
            m.tfs_request_count.inc((call.model, code.name))
        if code == grpc.StatusCode.OK:
            m.c_request_duration(call.model, call.api, call.protocol).observe(elapsed)
            if tfs_api is not None:
                m.tfs_request_latency.observe(
                    (call.model, tfs_api, call.protocol.upper()), elapsed * 1e6
                )

    async def wait_idle(self, timeout: float) -> bool:
        """Until no request is in flight (True), or `timeout` seconds (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def signature_label(signature: Signature) -> str:
    key = signature.key
    if key.startswith(_MULTI_PREFIX):  # MultiInference's combined signature
        return key[len(_MULTI_PREFIX) :]
    return key


class ObservedRunner:
    """Wraps any Runner: notes version/signature on the call and times the run."""

    def __init__(self, runner: Runner, metrics: Metrics) -> None:
        self.inner = runner
        self._metrics = metrics

    async def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        call = _current.get()
        sig = signature_label(signature)
        version = str(servable.version)
        if call is not None:
            call.version, call.signature = version, sig
        started = time.perf_counter()
        result = await self.inner.run(servable, signature, inputs, outputs)
        elapsed = time.perf_counter() - started
        m = self._metrics
        m.c_run_duration(servable.name, version, sig).observe(elapsed)
        api = call.api if call is not None else ""
        tfs_api = TFS_API.get(api) or ("MultiInference" if api == "multi_inference" else "")
        if tfs_api:
            m.tfs_runtime_latency.observe((servable.name, tfs_api, "TF1"), elapsed * 1e6)
        if api in _EXAMPLE_APIS and len(inputs) == 1:
            rows = len(next(iter(inputs.values())))
            m.tfs_example_counts.observe((servable.name,), rows)
            m.tfs_example_total.inc((servable.name,), rows)
        return result

    def __getattr__(self, name: str) -> Any:
        # Anything else the wrapped runner offers (e.g. batching's close/stats).
        return getattr(self.inner, name)
