"""Keep TensorFlow's long-lived objects out of Python's cyclic garbage collector.

Importing TensorFlow and loading a model leave hundreds of thousands of
Python objects on the heap; a full (generation 2) collection walks all of
them and holds the GIL for a long pause. Requests that allocate many
container objects (a REST body is a nested list per image row) trigger such
collections every few hundred requests, which showed up as p99 spikes for
every client at once. `gc.freeze()` moves everything alive
now into a permanent generation the collector never walks, so collections
only look at what requests allocated since.

Frozen objects are still freed by reference counting; only cycles among them
wait. An unloaded version's graph is full of cycles, so after an unload the
heap is thawed, collected once (one pause per unload, never per request) and
frozen again.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from serving.manager.state import State, Transition

log = logging.getLogger(__name__)


class HeapFreezer:
    """Manager listener: freeze after loads, reclaim after unloads.

    Reclaiming runs on its own thread, never under the manager's lock, and
    unloads that finish close together (a config change swapping many models)
    share one collection.
    """

    def __init__(self, settle_s: float = 0.5) -> None:
        self._settle = settle_s
        self._wanted = threading.Event()
        self._closed = False
        self.reclaims = 0
        self._thread = threading.Thread(target=self._run, name="heap", daemon=True)
        self._thread.start()

    def __call__(self, event: Transition) -> None:
        if event.state == State.AVAILABLE:
            gc.freeze()
        elif event.unload_finished:
            self._wanted.set()

    def close(self) -> None:
        self._closed = True
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._closed:
                return
            time.sleep(self._settle)  # let the unload job drop its last reference
            self._wanted.clear()
            if self._closed:
                return
            self.reclaim()

    def reclaim(self) -> None:
        """Collect what is unreachable (an unloaded graph), freeze the rest."""
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.reclaims += 1
        log.debug(
            "heap: collected %d objects after an unload in %.0f ms",
            freed,
            (time.perf_counter() - started) * 1e3,
        )
