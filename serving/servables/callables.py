"""Session callables that pick, by measurement, where TensorFlow runs the ops.

TensorFlow normally hands a step's ops to its inter-op thread pool. For a
small graph the hand-off dominates: half_plus_two runs several times faster
with `RunOptions.inter_op_thread_pool = -1` (ops run in the calling thread)
than through the pool. A big graph with parallel branches wants the pool. So each
(signature, feeds, fetches) callable times both ways over its first calls and
keeps the faster one; intra-op parallelism (inside one matmul or conv) is the
same either way.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from tensorflow.core.protobuf import config_pb2

TRIALS_PER_MODE = 8

MakeCallable = Callable[[config_pb2.CallableOptions], Callable[..., Any]]


class TunedCallable:
    def __init__(self, make: MakeCallable, options: config_pb2.CallableOptions) -> None:
        caller = config_pb2.CallableOptions()
        caller.CopyFrom(options)
        caller.run_options.inter_op_thread_pool = -1
        self._modes: dict[str, Callable[..., Any]] = {
            "pool": make(options),
            "caller": make(caller),
        }
        self._times: dict[str, list[float]] = {"pool": [], "caller": []}
        self._chosen: Callable[..., Any] | None = None
        self.mode = ""  # which one won, once decided
        self._lock = threading.Lock()
        self._turn = 0

    def __call__(self, *args: Any) -> Any:
        chosen = self._chosen
        if chosen is not None:
            return chosen(*args)
        with self._lock:
            self._turn += 1
            mode = "pool" if self._turn % 2 else "caller"
        fn = self._modes[mode]
        started = time.perf_counter()
        result = fn(*args)
        took = time.perf_counter() - started
        with self._lock:
            self._times[mode].append(took)
            if self._chosen is None and all(
                len(t) >= TRIALS_PER_MODE for t in self._times.values()
            ):
                self.mode = min(self._times, key=lambda m: statistics.median(self._times[m]))
                self._chosen = self._modes[self.mode]
        return result
