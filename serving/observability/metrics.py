"""Every metric the server exports, and the functions that record them.

Two families live on one page:
- `model_server_*`: this server's own metrics (prometheus-client), labelled
  by model, version, signature, API, protocol and status code;
- TF Serving's names (`:tensorflow:serving:*`, `:tensorflow:cc:saved_model:*`)
  with TF Serving's labels, units (microseconds) and buckets, written by
  `tfs.py`, so existing dashboards and the HPA rule keep working.

Label values only ever come from configured model names and from loaded
models' versions and signatures (the request observer validates the name
first), never from raw client input.

Batching hooks (called by the batching layer; cheap, thread-safe except
what alone_recorder returns, which the event loop calls):
    observe_batch(model, signature, size, padded_size=None)
    observe_queue_wait(model, signature, seconds, thread_pool_name=...)
    alone_recorder(model, signature) -> record(rows)
    set_queue_depth(model, signature, depth)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from serving.observability.tfs import BucketSeries, TfsRegistry, exponential_buckets

# `_created` series double the page for no dashboard's benefit.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; from a tiny model's sub-millisecond call up to a minute-long request.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

# TF Serving's API label values for request_count/request_latency.
TFS_API = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
DEFAULT_BATCH_THREAD_POOL = "model_server_batch_threads"


L = TypeVar("L", Counter, Gauge, Histogram)
K = TypeVar("K", bound=Hashable)

# Per-request records a Recorder keeps before folding them into the metrics.
FOLD_EVERY = 256

# Takes a batch of recorded values and adds them to one metric.
Sink = Callable[[np.ndarray], None]


class Recorder:
    """One request outcome's values (durations, rows), folded into its metrics in bulk.

    The request path only appends a number. Every FOLD_EVERY records, and
    before every scrape, the array goes to the outcome's sinks at once: a
    counter adds the count, a histogram buckets the whole array. Recorded one
    at a time, each request cost a bucket scan and a locked increment or two
    in every one of three or four metrics. Appends and folds both run on the
    event loop thread (requests are observed there and the metrics page is
    served there), so nothing recorded is missed by a scrape.
    """

    __slots__ = ("_sinks", "pending")

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.pending: list[float] = []
        self._sinks = tuple(sinks)

    def add(self, value: float) -> None:
        pending = self.pending
        pending.append(value)
        if len(pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        pending = self.pending
        if not pending:
            return
        self.pending = []
        values = np.array(pending, dtype=np.float64)
        for sink in self._sinks:
            sink(values)


class BulkHistogram:
    """A labelled Prometheus histogram fed whole arrays (a Recorder's sink).

    Written to the page exactly as prometheus-client's Histogram writes it
    (HELP, TYPE, `le` spelling, bucket/count/sum order, series in the order
    they first appeared).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._buckets = BucketSeries(buckets, upper_inclusive=True)
        self._le = [*map(floatToGoString, self._buckets.limits), "+Inf"]
        # A sink takes arrays, other callers one value (both thread-safe).
        self.add = self._buckets.observe_many
        self.observe = self._buckets.observe
        registry.register(self)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self._documentation, labels=self._labelnames)

    def describe(self) -> list[HistogramMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = self._family()
        for labels, counts, total in self._buckets.snapshot():
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(list(labels), list(zip(self._le, cumulative, strict=True)), total)
        yield family


class Children(Generic[L]):
    """`metric.labels(*values)` memoised: prometheus-client validates on every call."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: L) -> None:
        self._metric: L = metric
        self._cache: dict[tuple[str, ...], L] = {}

    def __call__(self, *values: str) -> L:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class Metrics:
    """One registry per process; `page()` renders both families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        prometheus_client.ProcessCollector(registry=reg)
        prometheus_client.PlatformCollector(registry=reg)
        prometheus_client.GCCollector(registry=reg)

        # ------------------------------------------------------------ requests
        self.requests = Counter(
            "model_server_requests",
            "Requests handled, by model, version, signature, API, protocol and status code.",
            ["model", "version", "signature", "api", "protocol", "code"],
            registry=reg,
        )
        self.request_duration = BulkHistogram(
            "model_server_request_duration_seconds",
            "End-to-end latency of successful requests (decode, queue, run, encode).",
            ["model", "api", "protocol"],
            LATENCY_BUCKETS,
            reg,
        )
        self.run_duration = BulkHistogram(
            "model_server_model_run_duration_seconds",
            "Time in the model alone (the runner call, batching queue included), successful runs.",
            ["model", "version", "signature"],
            LATENCY_BUCKETS,
            reg,
        )
        self.inflight = Gauge(
            "model_server_inflight_requests",
            "Requests being handled now.",
            ["protocol"],
            registry=reg,
        )
        self.unknown_model = Counter(
            "model_server_unknown_model_requests",
            "Requests naming a model that is not configured (not labelled by that name).",
            ["protocol"],
            registry=reg,
        )
        for protocol in ("grpc", "rest"):
            self.inflight.labels(protocol)
            self.unknown_model.labels(protocol)

        # -------------------------------------------------------------- models
        self.loads = Counter(
            "model_server_model_load_attempts",
            "Model version load attempts (retries included), by outcome: success or failure.",
            ["model", "outcome"],
            registry=reg,
        )
        self.load_duration = Histogram(
            "model_server_model_load_duration_seconds",
            "Time to load one model version (successful loads).",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        self.unloads = Counter(
            "model_server_model_unloads",
            "Model versions unloaded.",
            ["model"],
            registry=reg,
        )

        # ------------------------------------------------------------ batching
        self.batch_size = BulkHistogram(
            "model_server_batch_size",
            "Rows in each batch the batching layer ran (before padding).",
            ["model", "signature"],
            BATCH_SIZE_BUCKETS,
            reg,
        )
        self.batch_padding = Counter(
            "model_server_batch_padding_rows",
            "Rows of padding added to reach an allowed batch size.",
            ["model", "signature"],
            registry=reg,
        )
        self.queue_wait = BulkHistogram(
            "model_server_batch_queue_wait_seconds",
            "Time a request waited in a batching queue before its batch started.",
            ["model", "signature"],
            LATENCY_BUCKETS,
            reg,
        )
        self.queue_depth = Gauge(
            "model_server_batch_queue_depth",
            "Requests waiting in a batching queue now.",
            ["model", "signature"],
            registry=reg,
        )

        # ------------------------------------------------------------- storage
        self.storage_bytes = Counter(
            "model_server_storage_download_bytes",
            "Bytes downloaded from object storage into the model cache, by URL scheme.",
            ["scheme"],
            registry=reg,
        )
        self.storage_seconds = Histogram(
            "model_server_storage_download_seconds",
            "Time to download one model version into the cache (successful downloads).",
            ["scheme"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        self.storage_versions = Counter(
            "model_server_storage_versions",
            "Versions materialised from object storage, by outcome: "
            "downloaded, cached (reused from the cache) or failed.",
            ["scheme", "outcome"],
            registry=reg,
        )

        # ----------------------------------------------------- TF Serving names
        self.tfs = TfsRegistry()
        us = exponential_buckets(10, 1.8, 33)
        self.tfs_request_count = self.tfs.counter(
            ":tensorflow:serving:request_count", ["model_name", "status"]
        )
        self.tfs_request_latency = self.tfs.histogram(
            ":tensorflow:serving:request_latency", ["model_name", "API", "entrypoint"], us
        )
        self.tfs_runtime_latency = self.tfs.histogram(
            ":tensorflow:serving:runtime_latency", ["model_name", "API", "runtime"], us
        )
        self.tfs_example_counts = self.tfs.histogram(
            ":tensorflow:serving:request_example_counts",
            ["model"],
            exponential_buckets(1, 2, 15),
        )
        self.tfs_example_total = self.tfs.counter(
            ":tensorflow:serving:request_example_count_total", ["model"]
        )
        self.tfs_load_attempts = self.tfs.counter(
            ":tensorflow:cc:saved_model:load_attempt_count", ["model_path", "status"]
        )
        self.tfs_load_latency = self.tfs.counter(
            ":tensorflow:cc:saved_model:load_latency", ["model_path"]
        )
        self.tfs_queuing_latency = self.tfs.histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            ["thread_pool_name"],
            exponential_buckets(100, 1.2, 52),
        )
        self.tfs_wrapped_runs = self.tfs.counter(
            ":tensorflow:serving:batching_session:wrapped_run_count", []
        )

        # Hot-path accessors (label values → child).
        self.c_requests = Children(self.requests)
        self.c_inflight = Children(self.inflight)
        self.c_unknown_model = Children(self.unknown_model)
        self.c_queue_depth = Children(self.queue_depth)

        self._state_source: Callable[[], Iterable[tuple[str, str, int]]] | None = None
        reg.register(_VersionStates(self))
        # Per outcome: its Recorder (bounded like the label sets they feed).
        self._recorders: dict[Hashable, Recorder] = {}

    def recorder(self, key: K, sinks: Callable[[K], Sequence[Sink]]) -> Recorder:
        """The Recorder for one outcome (`key`), made with `sinks(key)` the first time."""
        found = self._recorders.get(key)
        if found is None:
            found = self._recorders[key] = Recorder(sinks(key))
        return found

    def set_version_states(self, source: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """Where `model_server_model_versions` reads (model, state, count) at scrape time."""
        self._state_source = source

    def page(self) -> bytes:
        """The whole Prometheus text page: our metrics, then TF Serving's."""
        for recorder in list(self._recorders.values()):
            recorder.fold()
        return generate_latest(self.registry) + self.tfs.render().encode()

    # ----------------------------------------------------------- model loads

    def observe_load(self, model: str, path: str, seconds: float, ok: bool) -> None:
        self.loads.labels(model, "success" if ok else "failure").inc()
        self.tfs_load_attempts.inc((path, "success" if ok else "fail"))
        if ok:
            self.load_duration.labels(model).observe(seconds)
            self.tfs_load_latency.inc((path,), int(seconds * 1e6))

    def observe_unload(self, model: str) -> None:
        self.unloads.labels(model).inc()


class _VersionStates:
    """`model_server_model_versions{model,state}`, read from the manager when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("model_server_model_versions", "")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "model_server_model_versions",
            "Model versions the manager knows, by state (LOADING, AVAILABLE, UNLOADING, END...).",
            labels=["model", "state"],
        )
        source = self._metrics._state_source
        if source is not None:
            for model, state, count in source():
                family.add_metric([model, state], count)
        yield family


_lock = threading.Lock()
_metrics: Metrics | None = None


def get() -> Metrics:
    """The process's metrics (created on first use)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


# ----------------------------------------------------------- batching hooks


def observe_batch(model: str, signature: str, size: int, padded_size: int | None = None) -> None:
    """One batch was run: `size` real rows, padded to `padded_size` (if padded)."""
    m = get()
    m.batch_size.observe((model, signature), size)
    if padded_size is not None and padded_size > size:
        m.batch_padding.labels(model, signature).inc(padded_size - size)
    m.tfs_wrapped_runs.inc(())


def observe_queue_wait(
    model: str,
    signature: str,
    seconds: float,
    thread_pool_name: str = DEFAULT_BATCH_THREAD_POOL,
) -> None:
    """A request left the queue after `seconds` (call once per request)."""
    m = get()
    m.queue_wait.observe((model, signature), seconds)
    m.tfs_queuing_latency.observe((thread_pool_name,), seconds * 1e6)


def alone_recorder(model: str, signature: str) -> Callable[[float], None]:
    """What records a request that ran at once on the event loop as a batch of
    its own (`rows` rows): as `observe_batch` + `observe_queue_wait(0)` record
    it, through a Recorder (event loop thread only), as this is once per request."""
    return get().recorder(("alone", model, signature), _alone_sinks).add


def _alone_sinks(key: tuple[str, str, str]) -> list[Sink]:
    m = get()
    labels = key[1:]
    pool = (DEFAULT_BATCH_THREAD_POOL,)
    return [
        lambda rows: m.batch_size.add(labels, rows),
        lambda rows: m.queue_wait.add(labels, np.zeros_like(rows)),
        lambda rows: m.tfs_queuing_latency.observe_many(pool, np.zeros_like(rows)),
        lambda rows: m.tfs_wrapped_runs.inc((), len(rows)),
    ]


class StorageHooks:
    """serving.storage's download observer: cache fills (load threads only)."""

    def downloaded(self, scheme: str, size: int) -> None:
        get().storage_bytes.labels(scheme).inc(size)

    def download_finished(self, scheme: str, seconds: float) -> None:
        m = get()
        m.storage_seconds.labels(scheme).observe(seconds)
        m.storage_versions.labels(scheme, "downloaded").inc()

    def download_failed(self, scheme: str) -> None:
        get().storage_versions.labels(scheme, "failed").inc()

    def cache_hit(self, scheme: str) -> None:
        get().storage_versions.labels(scheme, "cached").inc()


def set_queue_depth(model: str, signature: str, depth: int) -> None:
    """Requests now waiting in the (model, signature) queue."""
    get().c_queue_depth(model, signature).set(depth)
