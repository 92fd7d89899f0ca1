"""The in-process floor: what one thread gets calling a model's signature directly.

Two ways, both measured: the public API a user would write
(`tf.saved_model.load(...).signatures[...]`) and the server's own call path
(`load_servable(...).run(...)`, the Session callable the server uses). The
server can only add cost on top of the second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from loadtests.models import BenchModel


class CallTiming(BaseModel):
    calls: int
    mean_us: float
    p50_us: float

    @property
    def rate(self) -> float:
        return 1e6 / self.mean_us


class BatchPoint(BaseModel):
    batch: int
    call_us: float
    rows_per_s: float
    # Process CPU (TensorFlow's own threads included) per row: what a row
    # costs the machine, whatever the wall time.
    cpu_us_per_row: float | None = None


class Floor(BaseModel):
    model: str
    loader: str  # the Servable class the server's loader picked
    public_api: CallTiming
    server_path: CallTiming
    batches: list[BatchPoint]

    @property
    def best_batch(self) -> BatchPoint:
        return max(self.batches, key=lambda p: p.rows_per_s)


def time_calls(call: Callable[[], object], seconds: float, warmup: int = 20) -> CallTiming:
    for _ in range(warmup):
        call()
    durations: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    while True:
        start = clock()
        call()
        end = clock()
        durations.append(end - start)
        if end >= deadline:
            break
    arr = np.asarray(durations, dtype=np.float64) / 1e3
    return CallTiming(calls=len(arr), mean_us=float(arr.mean()), p50_us=float(np.median(arr)))


def _public_api(model: BenchModel, version_dir: Path, seconds: float) -> CallTiming:
    """What a user's own code gets: tf.saved_model.load and a signature function."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir), tags=["serve"])
    signature_fn = loaded.signatures["serving_default"]
    feed = {model.input_name: tf.constant(model.row[None])}
    return time_calls(lambda: signature_fn(**feed), seconds)


def measure(model: BenchModel, version_dir: Path, seconds: float, batch_sizes: list[int]) -> Floor:
    from serving.servables.loader import load_servable
    from serving.servables.session_bundle import SessionOptions

    public = _public_api(model, version_dir, seconds)

    servable = load_servable(model.name, 1, str(version_dir), SessionOptions())
    try:
        signature = servable.signatures["serving_default"]
        outputs = [model.output_name]

        def run(batch: np.ndarray) -> Callable[[], object]:
            return lambda: servable.run(signature, {model.input_name: batch}, outputs)

        first = run(model.row[None])()[model.output_name]
        if not model.expected(first[0]):
            raise AssertionError(f"{model.name}: unexpected in-process output {first[0]}")
        own = time_calls(run(model.row[None]), seconds)
        points = []
        for size in batch_sizes:
            batch = np.repeat(model.row[None], size, axis=0)
            cpu = time.process_time()
            timing = time_calls(run(batch), seconds / 2, warmup=3)
            cpu = time.process_time() - cpu
            points.append(
                BatchPoint(
                    batch=size,
                    call_us=timing.mean_us,
                    rows_per_s=size * timing.rate,
                    cpu_us_per_row=cpu * 1e6 / (size * (timing.calls + 3)),
                )
            )
        return Floor(
            model=model.name,
            loader=type(servable).__name__,
            public_api=public,
            server_path=own,
            batches=points,
        )
    finally:
        servable.close()
