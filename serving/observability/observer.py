"""Per-request accounting for every protocol.

The request context every protocol runs its requests in
(serving.inference.context.RequestContext) calls, around each request:

    token = observer.start(api, protocol, model_name)
    ... handle ...
    observer.finish(token, grpc.StatusCode)

`start` validates the model name against the configured models (an unknown
name is counted without its name, so clients cannot create series) and puts
the call in a context variable. The version and signature are only known
once the inference layer has picked a servable: `ObservedRunner`, which
wraps the runner, fills them in from the servable it is handed and times
the model run itself. Neither the protocol adapters nor the inference layer
know anything of metrics. Both only append the duration to the outcome's
Recorder, which folds into the metrics in bulk (serving.observability.metrics).

The observer also counts in-flight requests, which the SIGTERM drain waits on.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from serving.errors import ServingError
from serving.inference.runner import Runner
from serving.observability.metrics import TFS_API, Metrics, Recorder, Sink
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


# version label, signature label, the run's Recorder, TF Serving's example-count labels.
_RunBound = tuple[str, str, Recorder, tuple[str] | None]

_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "model_server_call", default=None
)


_OK = grpc.StatusCode.OK
_CODE_NAMES = {code: code.name for code in grpc.StatusCode}  # Enum.name is a slow property
_ENTRYPOINTS = {"grpc": "GRPC", "rest": "REST"}  # TF Serving's entrypoint label


class RequestObserver:
    """Counts every request (metrics) and the ones in flight (the drain waits on them).

    Runs on the event loop thread only, and on every request: what can be
    bound once is (the in-flight gauge reads the observer's own counts when
    scraped, rather than being moved twice per request).
    """

    def __init__(self, metrics: Metrics, configured: Callable[[], Collection[str]]) -> None:
        self._metrics = metrics
        self._configured = configured
        self._inflight = 0
        self._by_protocol: dict[str, int] = {}
        for protocol in _ENTRYPOINTS:
            self._count_protocol(protocol)
        self._idle: asyncio.Event | None = None  # only while the drain waits
        # Set by the drain: new requests are refused (UNAVAILABLE / HTTP 503).
        self.draining = False

    @property
    def inflight(self) -> int:
        return self._inflight

    def _count_protocol(self, protocol: str) -> None:
        self._by_protocol[protocol] = 0
        counts = self._by_protocol
        self._metrics.c_inflight(protocol).set_function(lambda: counts[protocol])

    def start(self, api: str, protocol: str, name: str | None = None) -> Call:
        """Begin accounting for one request to model `name` (as the client spelled it).

        Raises ServingError(UNAVAILABLE) while the server drains; the adapter
        reports it like any other error (nothing to `finish`).
        """
        if self.draining:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
        model = ""
        if name:
            if name in self._configured():
                model = name
            else:
                self._metrics.c_unknown_model(protocol).inc()
        call = Call(api, protocol, model, time.perf_counter())
        call.reset = _current.set(call)
        self._inflight += 1
        if protocol not in self._by_protocol:
            self._count_protocol(protocol)
        self._by_protocol[protocol] += 1
        return call

    def finish(self, call: Call | None, code: grpc.StatusCode) -> None:
        if call is None:
            return
        elapsed = time.perf_counter() - call.started
        if call.reset is not None:
            # Not contextlib.suppress: that is an object per request on the hot path.
            try:  # noqa: SIM105
                _current.reset(call.reset)
            except ValueError:  # finished in another context: nothing to restore there
                pass
        self._inflight -= 1
        self._by_protocol[call.protocol] -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()
        model, api = call.model, call.api
        if not model and api != "reload_config":
            return  # unknown or missing model name: no per-model series
        # One Recorder per outcome: bounded like the label sets themselves.
        key = (model, call.version, call.signature, api, call.protocol, code)
        self._metrics.recorder(key, self._sinks).add(elapsed)

    def _sinks(self, key: tuple[str, str, str, str, str, grpc.StatusCode]) -> list[Sink]:
        """Everything `finish` records for one outcome, resolved once (labels
        validated, children looked up, TF Serving's label tuples built)."""
        model, version, signature, api, protocol, code = key
        m = self._metrics
        code_name = _CODE_NAMES[code]
        tfs_api = TFS_API.get(api)
        requests = m.c_requests(model, version, signature, api, protocol, code_name)
        sinks: list[Sink] = [lambda values: requests.inc(len(values))]
        if tfs_api is not None:
            count_labels = (model, code_name)
            sinks.append(lambda values: m.tfs_request_count.inc(count_labels, len(values)))
        if code is _OK:
            duration_labels = (model, api, protocol)
            sinks.append(lambda values: m.request_duration.add(duration_labels, values))
            if tfs_api is not None:
                entrypoint = _ENTRYPOINTS.get(protocol) or protocol.upper()
                latency_labels = (model, tfs_api, entrypoint)
                sinks.append(
                    lambda values: m.tfs_request_latency.observe_many(latency_labels, values * 1e6)
                )
        return sinks

    async def wait_idle(self, timeout: float) -> bool:
        """Until no request is in flight (True), or `timeout` seconds (False)."""
        if self._inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._idle = None


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

    def _bind(self, servable: Servable, signature: Signature, api: str) -> _RunBound:
        sig = signature_label(signature)
        version = str(servable.version)
        tfs_api = TFS_API.get(api) or ("MultiInference" if api == "multi_inference" else "")
        m = self._metrics
        name = servable.name

        def sinks(key: tuple[str, str, str, str, str]) -> list[Sink]:
            run_labels = (name, version, sig)
            out: list[Sink] = [lambda values: m.run_duration.add(run_labels, values)]
            if tfs_api:
                runtime_labels = (name, tfs_api, "TF1")
                out.append(
                    lambda values: m.tfs_runtime_latency.observe_many(runtime_labels, values * 1e6)
                )
            return out

        recorder = m.recorder(("run", name, version, sig, api), sinks)
        return version, sig, recorder, (name,) if api in _EXAMPLE_APIS else None

    async def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        call = _current.get()
        api = call.api if call is not None else ""
        # servable.memo[self]: (signature key, api) → what `run` records, pre-bound.
        per_servable: dict[tuple[str, str], _RunBound] | None = servable.memo.get(self)
        if per_servable is None:
            per_servable = servable.memo.setdefault(self, {})
        key = (signature.key, api)
        bound = per_servable.get(key)
        if bound is None:
            bound = per_servable[key] = self._bind(servable, signature, api)
        version, sig, recorder, examples_key = bound
        if call is not None:
            call.version, call.signature = version, sig
        started = time.perf_counter()
        result = await self.inner.run(servable, signature, inputs, outputs)
        recorder.add(time.perf_counter() - started)
        if examples_key is not None and len(inputs) == 1:
            rows = len(next(iter(inputs.values())))
            m = self._metrics
            m.tfs_example_counts.observe(examples_key, rows)
            m.tfs_example_total.inc(examples_key, rows)
        return result

    def __getattr__(self, name: str) -> Any:
        # Anything else the wrapped runner offers (e.g. batching's close/stats).
        return getattr(self.inner, name)
