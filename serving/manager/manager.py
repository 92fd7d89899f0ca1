"""Aspired-versions manager with TF Serving's availability-preserving policy.

Sources say which versions of each model *should* be served
(`set_aspired_versions`); the manager loads and unloads to match, one
reconcile pass at a time on its own thread, with loads on a small pool.

Availability preserving (the rules are a pure function in
`aspired_version_policy`): a version that is no longer aspired is unloaded
only once some aspired version is AVAILABLE (or nothing is aspired at all), so
a swap never leaves a gap, and a new version that fails to load leaves the old
one serving. Requests hold a handle; unloading waits for every handle on the
version to be released, so no in-flight request fails during a swap.

A version whose load failed is retried `max_load_retries` times, and again
whenever its files change (a folder still being copied when first seen): each
aspired version comes with a fingerprint of its files from the source, so the
manager itself never touches storage, and its lock is never held across I/O.

The manager knows servables only as `ManagedServable` (a device and `close`)
and holds whatever type its loader returns, so it imports no TensorFlow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

from serving.errors import LoadError, invalid_argument, not_found
from serving.manager.aspired_version_policy import Action, VersionSnapshot, next_actions
from serving.manager.state import State, Transition, VersionStatus
from serving.sources.source import AspiredVersion

log = logging.getLogger(__name__)


class ManagedServable(Protocol):
    """What the manager needs of a loaded version (Servable satisfies it)."""

    device: str

    def close(self) -> None: ...


S = TypeVar("S", bound=ManagedServable)

Loader = Callable[[str, int, str], S]


@dataclass
class _Version(Generic[S]):
    version: int
    path: str
    fingerprint: Hashable | None = None  # of the files, as the source last saw them
    state: State = State.START
    aspired: bool = True
    error: str = ""
    error_code: int = 0
    servable: S | None = None
    inflight: int = 0
    attempts: int = 0
    retry_at: float | None = None
    loading_fingerprint: Hashable | None = None  # the files the running load sees
    failed_fingerprint: Hashable | None = None
    job_running: bool = False


@dataclass
class _Model(Generic[S]):
    name: str
    versions: dict[int, _Version[S]] = field(default_factory=dict)
    # Labels in use, and the ones the config asks for: a label moves to its
    # new version only once that version is AVAILABLE.
    labels: dict[str, int] = field(default_factory=dict)
    wanted_labels: dict[str, int] = field(default_factory=dict)


class ServableRequest(NamedTuple):
    """Which version a request wants: a number, a label, or the latest.

    A NamedTuple rather than a frozen dataclass: one is made per request, and
    a frozen dataclass's __init__ costs twice as much."""

    name: str
    version: int | None = None
    label: str | None = None

    def describe(self) -> str:
        # TF Serving's ServableRequest::DebugString.
        if self.version is not None:
            return f"Specific({self.name}, {self.version})"
        return f"Latest({self.name})"


class Held(Generic[S]):
    """`ServableManager.acquire`'s handle: a class, not @contextmanager, because
    it is entered on every request and a generator costs more."""

    __slots__ = ("_entry", "_manager", "_request")

    def __init__(self, manager: ServableManager[S], request: ServableRequest) -> None:
        self._manager = manager
        self._request = request
        self._entry: _Version[S] | None = None

    def __enter__(self) -> S:
        manager = self._manager
        entry = self._entry = manager._take(manager.resolve(self._request))
        assert entry.servable is not None
        return entry.servable

    def __exit__(self, *exc: object) -> None:
        if self._entry is not None:
            self._manager._release(self._entry)
            self._entry = None


class ServableManager(Generic[S]):
    def __init__(
        self,
        loader: Loader[S],
        *,
        max_load_retries: int = 5,
        load_retry_interval_s: float = 60.0,
        load_threads: int = 2,
        allow_labels_for_unavailable: bool = False,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self._loader = loader
        self._max_retries = max_load_retries
        self._retry_interval = load_retry_interval_s
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._listeners: list[Callable[[Transition], None]] = []
        if on_transition is not None:
            self._listeners.append(on_transition)
        self._models: dict[str, _Model[S]] = {}
        # Why a model's versions cannot be listed now (storage errors), for its status.
        self._source_errors: dict[str, str] = {}
        lock = self._lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # Signalled when an unloading version's last request finishes. Kept
        # apart from _cond so that releasing a handle (every request) does not
        # wake the manager thread and the waiters of wait_until.
        self._drained = threading.Condition(lock)
        self._pool = ThreadPoolExecutor(max(1, load_threads), thread_name_prefix="load")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="manager", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- inputs

    def add_listener(self, listener: Callable[[Transition], None]) -> None:
        self._listeners.append(listener)

    def set_aspired_versions(self, name: str, aspired: Mapping[int, AspiredVersion | str]) -> None:
        """The complete set of versions of `name` that should be served now.

        Each version comes as an AspiredVersion (path and fingerprint) or a
        bare path (no fingerprint: no retry when its files change).
        """
        wanted = {
            number: item if isinstance(item, AspiredVersion) else AspiredVersion(item)
            for number, item in aspired.items()
        }
        with self._cond:
            model = self._models.setdefault(name, _Model(name))
            for number, entry in model.versions.items():
                entry.aspired = number in wanted
            for number, want in wanted.items():
                known = model.versions.get(number)
                unloaded = known is not None and known.state == State.END and not known.error
                if known is None or unloaded or (known.error and known.path != want.path):
                    model.versions[number] = _Version(number, want.path, want.fingerprint)
                    continue
                if known.error and not known.job_running and _changed(known, want.fingerprint):
                    log.info("%s version %d: files changed since it failed; retrying", name, number)
                    known.state, known.error, known.attempts = State.START, "", 0
                    known.retry_at = None
                known.fingerprint = want.fingerprint
            self._cond.notify_all()

    def set_source_error(self, name: str, error: str | None) -> None:
        """The source could not list `name` (None: it can again); shown by status()."""
        with self._cond:
            if error:
                self._source_errors[name] = error
            else:
                self._source_errors.pop(name, None)

    def set_labels(self, name: str, labels: Mapping[str, int]) -> None:
        """Ask for version labels; each takes effect once its version is AVAILABLE.

        Until then a label keeps pointing at its previous version, so moving
        `stable` to a version still loading never breaks `stable` requests.
        With allow_labels_for_unavailable, a *new* label applies at once (TF
        Serving's rule for --allow_version_labels_for_unavailable_models).
        """
        with self._cond:
            model = self._models.setdefault(name, _Model(name))
            model.wanted_labels = dict(labels)
            self._promote_labels(model)

    def _promote_labels(self, model: _Model[S]) -> None:
        for label in list(model.labels):
            if label not in model.wanted_labels:
                del model.labels[label]
        for label, number in model.wanted_labels.items():
            if model.labels.get(label) == number:
                continue
            entry = model.versions.get(number)
            ready = entry is not None and entry.state == State.AVAILABLE
            if ready or (self._allow_unavailable_labels and label not in model.labels):
                model.labels[label] = number

    # ---------------------------------------------------------------- lookups

    def model_names(self) -> list[str]:
        with self._cond:
            return sorted(self._models)

    def resolve(self, request: ServableRequest) -> ServableRequest:
        """Turn a label into its version number."""
        if request.label is None:
            return request
        with self._cond:
            model = self._models.get(request.name)
            if model is None or request.label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {request.label}")
            return ServableRequest(request.name, model.labels[request.label])

    def acquire(self, request: ServableRequest) -> Held[S]:
        """Hold a loaded version for the duration of one request (`with`)."""
        return Held(self, request)

    # _take and _release run on every request: they hold the lock directly,
    # which skips the Condition's Python-level __enter__/__exit__.
    def _release(self, entry: _Version[S]) -> None:
        with self._lock:
            entry.inflight -= 1
            if entry.inflight == 0 and entry.state == State.UNLOADING:
                self._drained.notify_all()

    def _take(self, request: ServableRequest) -> _Version[S]:
        with self._lock:
            model = self._models.get(request.name)
            entry: _Version[S] | None = None
            if model is not None:
                if request.version is None:
                    for candidate in model.versions.values():
                        if candidate.state == State.AVAILABLE and (
                            entry is None or candidate.version > entry.version
                        ):
                            entry = candidate
                else:
                    entry = model.versions.get(request.version)
                    if entry is not None and entry.state != State.AVAILABLE:
                        entry = None
            if entry is None:
                raise not_found(f"Servable not found for request: {request.describe()}")
            entry.inflight += 1
            return entry

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Versions of `name`, newest first, as GetModelStatus reports them."""
        with self._cond:
            model = self._models.get(name)
            if model is None or not model.versions:
                error = self._source_errors.get(name)
                raise not_found(
                    f"Could not find any versions of model {name}" + (f": {error}" if error else "")
                )
            entries = sorted(model.versions.values(), key=lambda v: -v.version)
            if version is not None:
                entries = [v for v in entries if v.version == version]
                if not entries:
                    raise not_found(f"Could not find version {version} of model {name}")
            return [
                VersionStatus(
                    v.version,
                    v.state,
                    v.error if v.state == State.END else "",
                    v.servable.device if v.servable is not None else "",
                    v.error_code if v.state == State.END and v.error else 0,
                )
                for v in entries
            ]

    def labels(self, name: str) -> dict[str, int]:
        with self._cond:
            model = self._models.get(name)
            return dict(model.labels) if model else {}

    def available_versions(self, name: str) -> list[int]:
        with self._cond:
            model = self._models.get(name)
            if model is None:
                return []
            return sorted(v.version for v in model.versions.values() if v.state == State.AVAILABLE)

    def is_settled(self, name: str) -> bool:
        """True once no aspired version of `name` is still waiting to load."""
        with self._cond:
            model = self._models.get(name)
            if model is None:
                return False
            return all(
                v.state in (State.AVAILABLE, State.END) and v.retry_at is None
                for v in model.versions.values()
                if v.aspired
            )

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True

    # ------------------------------------------------------------- reconcile

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                wake = self._reconcile()
                self._cond.wait(timeout=wake)

    def _reconcile(self) -> float:
        """Start what the policy says is due; return seconds until the next due time."""
        now = time.monotonic()
        next_due = 1.0
        for model in self._models.values():
            entries = model.versions
            decision = next_actions(
                [
                    VersionSnapshot(v.version, v.state, v.aspired, v.job_running, v.retry_at)
                    for v in entries.values()
                ],
                now,
            )
            for action, number in decision.actions:
                entry = entries[number]
                if action is Action.LOAD:
                    entry.retry_at = None
                    self._start_load(model, entry)
                elif action is Action.UNLOAD:
                    self._start_unload(model, entry)
                else:
                    self._transition(model, entry, State.END)
            if decision.retry_in is not None:
                next_due = min(next_due, decision.retry_in)
        return max(next_due, 0.01)

    def _start_load(self, model: _Model[S], entry: _Version[S]) -> None:
        entry.job_running = True
        entry.attempts += 1
        entry.loading_fingerprint = entry.fingerprint
        if entry.state != State.LOADING:
            self._transition(model, entry, State.LOADING)
        self._pool.submit(self._load_job, model, entry)

    def _load_job(self, model: _Model[S], entry: _Version[S]) -> None:
        started = time.monotonic()
        try:
            servable = self._loader(model.name, entry.version, entry.path)
        except LoadError as exc:
            self._load_failed(model, entry, str(exc), exc.code)
            return
        except Exception as exc:  # anything else a broken model throws
            self._load_failed(model, entry, f"{type(exc).__name__}: {exc}", 2)
            return
        seconds = time.monotonic() - started
        with self._cond:
            entry.job_running = False
            if self._stopping:
                servable.close()
                return
            entry.servable = servable
            entry.error = ""
            entry.failed_fingerprint = None
            self._transition(model, entry, State.AVAILABLE, seconds=seconds)
            self._promote_labels(model)
            self._cond.notify_all()

    def _load_failed(self, model: _Model[S], entry: _Version[S], error: str, code: int) -> None:
        with self._cond:
            entry.job_running = False
            entry.error_code = code
            entry.failed_fingerprint = entry.loading_fingerprint
            if entry.aspired and entry.attempts <= self._max_retries and not self._stopping:
                log.warning(
                    "%s version %d failed to load (attempt %d of %d), retrying in %.1fs: %s",
                    model.name,
                    entry.version,
                    entry.attempts,
                    self._max_retries + 1,
                    self._retry_interval,
                    error,
                )
                entry.error = error
                entry.retry_at = time.monotonic() + self._retry_interval
            else:
                entry.error = error
                entry.retry_at = None
                self._transition(model, entry, State.END, error=error)
            self._cond.notify_all()

    def _start_unload(self, model: _Model[S], entry: _Version[S]) -> None:
        entry.job_running = True
        self._transition(model, entry, State.UNLOADING)
        self._pool.submit(self._unload_job, model, entry)

    def _unload_job(
        self, model: _Model[S], entry: _Version[S], timeout: float | None = None
    ) -> None:
        started = time.monotonic()
        with self._cond:
            # No new handles are given out for an UNLOADING version; wait for
            # the requests that hold one to finish.
            self._drained.wait_for(lambda: entry.inflight == 0, timeout=timeout)
            servable, entry.servable = entry.servable, None
        try:
            if servable is not None:
                servable.close()
        except Exception:  # closing must not take the manager down
            log.exception("%s version %d: error while unloading", model.name, entry.version)
        with self._cond:
            entry.job_running = False
            self._transition(model, entry, State.END, seconds=time.monotonic() - started)
            if entry.aspired and not self._stopping:
                # Aspired again while it was unloading (its folder came back).
                model.versions[entry.version] = _Version(
                    entry.version, entry.path, entry.fingerprint
                )
            self._cond.notify_all()

    def _transition(
        self,
        model: _Model[S],
        entry: _Version[S],
        state: State,
        *,
        error: str = "",
        seconds: float | None = None,
    ) -> None:
        entry.state = state
        event = Transition(
            model.name,
            entry.version,
            state,
            error,
            seconds,
            entry.servable.device if entry.servable is not None else "",
        )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not stop the manager
                log.exception("transition listener failed")

    # -------------------------------------------------------------- shutdown

    def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Unload everything, waiting up to `drain_timeout` for in-flight requests."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            loaded = [
                (m, v)
                for m in self._models.values()
                for v in m.versions.values()
                if v.servable is not None
            ]
            for model, entry in loaded:
                self._transition(model, entry, State.UNLOADING)
        for model, entry in loaded:
            self._unload_job(model, entry, timeout=drain_timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _changed(entry: _Version[S], fingerprint: Hashable | None) -> bool:
    """Whether the files of a failed version differ from those its load saw."""
    return (
        entry.failed_fingerprint is not None
        and fingerprint is not None
        and fingerprint != entry.failed_fingerprint
    )
