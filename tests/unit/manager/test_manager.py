"""The manager's lifecycle rules, with a fake loader (no TensorFlow)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from serving.errors import LoadError, ServingError
from serving.manager.manager import ServableManager, ServableRequest
from serving.manager.state import State
from serving.sources.source import AspiredVersion
from serving.storage.local import fingerprint


class FakeServable:
    def __init__(self, name: str, version: int, path: str) -> None:
        self.name, self.version, self.path, self.device = name, version, path, "/CPU:0"
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeLoader:
    """Loads instantly unless told to block or to fail for a version."""

    def __init__(self) -> None:
        self.gates: dict[int, threading.Event] = {}
        self.failures: dict[int, int] = {}  # version -> how many more loads fail
        self.calls: list[int] = []
        self.loaded: dict[int, FakeServable] = {}

    def __call__(self, name: str, version: int, path: str) -> FakeServable:
        self.calls.append(version)
        gate = self.gates.get(version)
        if gate is not None:
            gate.wait(10)
        if self.failures.get(version, 0):
            self.failures[version] -= 1
            raise LoadError(f"broken version {version}", code=5)
        servable = FakeServable(name, version, path)
        self.loaded[version] = servable
        return servable


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def make_manager(loader: FakeLoader):
    managers: list[ServableManager] = []

    def make(**kwargs) -> ServableManager:
        kwargs.setdefault("load_retry_interval_s", 0.01)
        manager = ServableManager(loader, **kwargs)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.shutdown(drain_timeout=1)


def states(manager: ServableManager, name: str = "m") -> dict[int, State]:
    return {s.version: s.state for s in manager.status(name)}


def wait(manager: ServableManager, predicate, what: str) -> None:
    assert manager.wait_until(predicate, 5), what


def test_loads_aspired_versions_and_serves_latest(make_manager) -> None:
    m = make_manager()
    m.set_aspired_versions("m", {1: "/m/1", 2: "/m/2"})
    wait(m, lambda: m.available_versions("m") == [1, 2], "both versions available")
    with m.acquire(ServableRequest("m")) as servable:
        assert servable.version == 2
    with m.acquire(ServableRequest("m", 1)) as servable:
        assert servable.version == 1
    assert [s.version for s in m.status("m")] == [2, 1]  # newest first, as TF Serving


def test_not_found_messages(make_manager) -> None:
    m = make_manager()
    m.set_aspired_versions("m", {1: "/m/1"})
    wait(m, lambda: m.available_versions("m") == [1], "loaded")
    with pytest.raises(ServingError) as err, m.acquire(ServableRequest("nope")):
        pass
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.message == "Servable not found for request: Latest(nope)"
    with pytest.raises(ServingError) as err, m.acquire(ServableRequest("m", 7)):
        pass
    assert err.value.message == "Servable not found for request: Specific(m, 7)"
    with pytest.raises(ServingError, match="Could not find any versions of model nope"):
        m.status("nope")
    with pytest.raises(ServingError, match="Could not find version 7 of model m"):
        m.status("m", 7)


def test_swap_is_availability_preserving(make_manager, loader) -> None:
    m = make_manager()
    m.set_aspired_versions("m", {1: "/m/1"})
    wait(m, lambda: m.available_versions("m") == [1], "v1")
    loader.gates[2] = threading.Event()
    m.set_aspired_versions("m", {2: "/m/2"})
    wait(m, lambda: states(m).get(2) == State.LOADING, "v2 loading")
    # While v2 loads, v1 keeps serving.
    assert states(m)[1] == State.AVAILABLE
    with m.acquire(ServableRequest("m")) as servable:
        assert servable.version == 1
    loader.gates[2].set()
    wait(m, lambda: states(m) == {2: State.AVAILABLE, 1: State.END}, "v1 unloaded after v2")
    assert loader.loaded[1].closed


def test_failed_new_version_leaves_old_serving(make_manager, loader) -> None:
    m = make_manager(max_load_retries=1)
    m.set_aspired_versions("m", {1: "/m/1"})
    wait(m, lambda: m.available_versions("m") == [1], "v1")
    loader.failures[2] = 99
    m.set_aspired_versions("m", {2: "/m/2"})
    wait(m, lambda: states(m).get(2) == State.END, "v2 gave up")
    status = {s.version: s for s in m.status("m")}
    assert status[2].error == "broken version 2"
    assert status[2].error_code == 5
    assert status[1].state == State.AVAILABLE
    assert loader.calls.count(2) == 2  # first try + one retry
    with m.acquire(ServableRequest("m")) as servable:
        assert servable.version == 1


def test_retries_then_succeeds(make_manager, loader) -> None:
    m = make_manager(max_load_retries=3)
    loader.failures[1] = 2
    m.set_aspired_versions("m", {1: "/m/1"})
    wait(m, lambda: m.available_versions("m") == [1], "loaded on third try")
    assert loader.calls == [1, 1, 1]
    assert m.status("m")[0].error == ""


def polled(path: Path) -> AspiredVersion:
    """What the file-system source hands the manager for a version folder."""
    return AspiredVersion(str(path), fingerprint(str(path)))


def test_failed_version_retried_when_files_change(make_manager, loader, tmp_path: Path) -> None:
    version_dir = tmp_path / "1"
    version_dir.mkdir()
    (version_dir / "saved_model.pb").write_bytes(b"half copied")
    m = make_manager(max_load_retries=0)
    loader.failures[1] = 1
    m.set_aspired_versions("m", {1: polled(version_dir)})
    wait(m, lambda: states(m).get(1) == State.END, "first load failed")
    m.set_aspired_versions("m", {1: polled(version_dir)})  # next poll, nothing changed
    time.sleep(0.1)
    assert states(m)[1] == State.END and loader.calls == [1]
    (version_dir / "variables").mkdir()  # the copy completes
    (version_dir / "variables" / "variables.index").write_bytes(b"done")
    m.set_aspired_versions("m", {1: polled(version_dir)})
    wait(m, lambda: m.available_versions("m") == [1], "reloaded after the files changed")


def test_unload_waits_for_in_flight_requests(make_manager, loader) -> None:
    m = make_manager()
    m.set_aspired_versions("m", {1: "/m/1"})
    wait(m, lambda: m.available_versions("m") == [1], "v1")
    handle = m.acquire(ServableRequest("m"))
    handle.__enter__()
    m.set_aspired_versions("m", {})
    wait(m, lambda: states(m)[1] == State.UNLOADING, "unloading")
    time.sleep(0.1)
    assert states(m)[1] == State.UNLOADING and not loader.loaded[1].closed
    with pytest.raises(ServingError):  # no new requests on an unloading version
        m.acquire(ServableRequest("m")).__enter__()
    handle.__exit__(None, None, None)
    wait(m, lambda: states(m)[1] == State.END, "unloaded once the request finished")
    assert loader.loaded[1].closed


def test_removing_newest_brings_back_previous(make_manager) -> None:
    m = make_manager()
    m.set_aspired_versions("m", {2: "/m/2"})
    wait(m, lambda: m.available_versions("m") == [2], "v2")
    m.set_aspired_versions("m", {1: "/m/1"})
    wait(m, lambda: m.available_versions("m") == [1], "v1 back, v2 gone")
    m.set_aspired_versions("m", {2: "/m/2"})  # the folder comes back
    wait(m, lambda: m.available_versions("m") == [2], "v2 reloaded")


def test_labels_move_only_to_available_versions(make_manager, loader) -> None:
    m = make_manager()
    m.set_aspired_versions("m", {1: "/m/1"})
    m.set_labels("m", {"stable": 1})
    wait(m, lambda: m.labels("m") == {"stable": 1}, "label applied once v1 loaded")
    loader.gates[2] = threading.Event()
    m.set_aspired_versions("m", {1: "/m/1", 2: "/m/2"})
    m.set_labels("m", {"stable": 2, "canary": 2})
    assert m.labels("m") == {"stable": 1}  # v2 still loading: stable stays on v1
    with m.acquire(ServableRequest("m", label="stable")) as servable:
        assert servable.version == 1
    with pytest.raises(ServingError) as err:
        m.resolve(ServableRequest("m", label="canary"))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message == "Unrecognized servable version label: canary"
    loader.gates[2].set()
    wait(m, lambda: m.labels("m") == {"stable": 2, "canary": 2}, "labels moved to v2")


def test_unavailable_labels_allowed_when_asked(make_manager, loader) -> None:
    m = make_manager(allow_labels_for_unavailable=True)
    loader.gates[1] = threading.Event()
    m.set_aspired_versions("m", {1: "/m/1"})
    m.set_labels("m", {"next": 1})
    assert m.labels("m") == {"next": 1}
    loader.gates[1].set()


def test_unaspired_version_still_loading_is_dropped(make_manager, loader) -> None:
    m = make_manager()
    loader.gates[1] = threading.Event()
    m.set_aspired_versions("m", {1: "/m/1"})
    wait(m, lambda: states(m).get(1) == State.LOADING, "loading")
    m.set_aspired_versions("m", {2: "/m/2"})
    wait(m, lambda: m.available_versions("m") == [2], "v2 serves")
    loader.gates[1].set()
    wait(m, lambda: states(m).get(1) == State.END, "v1 loaded late, then unloaded")


class CyclicServable(FakeServable):
    """Like a TF graph: only the cyclic collector can free it."""

    def __init__(self, name: str, version: int, path: str) -> None:
        super().__init__(name, version, path)
        self.me = self


def test_heap_is_frozen_after_loads_and_reclaimed_after_unloads() -> None:
    import gc
    import weakref

    from serving.manager.heap import HeapFreezer

    refs: dict[int, weakref.ref] = {}

    def load(name: str, version: int, path: str) -> CyclicServable:
        servable = CyclicServable(name, version, path)
        refs[version] = weakref.ref(servable)
        return servable

    heap = HeapFreezer(settle_s=0.05)
    m = ServableManager(load, on_transition=heap)
    try:
        m.set_aspired_versions("m", {1: "/m/1"})
        wait(m, lambda: m.available_versions("m") == [1], "v1")
        assert gc.get_freeze_count() > 0  # the loaded version is out of the collector's way
        garbage = CyclicServable("g", 0, "")
        dropped = weakref.ref(garbage)
        gc.freeze()  # as the next load would
        del garbage
        gc.collect()
        assert dropped() is not None  # frozen cycles wait for a reclaim

        m.set_aspired_versions("m", {2: "/m/2"})
        wait(m, lambda: states(m) == {2: State.AVAILABLE, 1: State.END}, "v1 swapped for v2")
        deadline = time.monotonic() + 5
        while heap.reclaims == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refs[1]() is None, "the unloaded version was never collected"
        assert dropped() is None
        assert refs[2]() is not None
    finally:
        heap.close()
        m.shutdown(drain_timeout=1)
        gc.unfreeze()
