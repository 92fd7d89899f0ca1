"""DirectRunner: fast signatures inline, slow ones on the pool."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.inference.runner import DirectRunner
from serving.servables.signature import Signature


class SleepyServable:
    """Just what the runner uses of a Servable: `run`, and `memo` for its statistics."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.threads: list[str] = []
        self.memo: dict = {}

    def run(self, signature, inputs, outputs):
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return {"y": inputs["x"]}


SIG = Signature("s", "", {}, {})


def test_fast_calls_go_inline_and_slow_ones_back_to_the_pool() -> None:
    async def scenario() -> list[str]:
        runner = DirectRunner(ThreadPoolExecutor(2, thread_name_prefix="pool"), inline_below_s=0.01)
        servable = SleepyServable()
        x = {"x": np.zeros(4)}
        for _ in range(3):
            await runner.run(servable, SIG, x, ["y"])
        servable.delay = 0.1  # the model got slow (over 8x the bar): one inline call, then the pool
        for _ in range(3):
            await runner.run(servable, SIG, x, ["y"])
        await runner.run(servable, SIG, {"x": np.zeros(10_000)}, ["y"])  # large: pool
        return servable.threads

    threads = asyncio.run(scenario())
    main = threading.current_thread().name
    assert threads[0].startswith("pool")  # unknown cost: pool
    assert threads[1:4] == [main, main, main]  # measured fast: inline
    assert threads[4].startswith("pool") and threads[5].startswith("pool")
    assert threads[6].startswith("pool")


def test_a_fast_signature_stays_inline_through_slow_runs() -> None:
    """Runs slowed by waiting for the GIL (under 8x the bar) must not evict it."""

    async def scenario() -> list[str]:
        runner = DirectRunner(ThreadPoolExecutor(2, thread_name_prefix="pool"), inline_below_s=0.01)
        servable = SleepyServable()
        x = {"x": np.zeros(4)}
        for delay in (0.0, 0.0, 0.03, 0.0, 0.05, 0.03, 0.0):
            servable.delay = delay
            await runner.run(servable, SIG, x, ["y"])
        return servable.threads

    threads = asyncio.run(scenario())
    main = threading.current_thread().name
    assert threads[0].startswith("pool")
    assert threads[1:] == [main] * 6


def test_tuned_callable_keeps_the_faster_mode() -> None:
    from tensorflow.core.protobuf import config_pb2

    from serving.servables.callables import TRIALS_PER_MODE, TunedCallable

    calls: list[str] = []

    def make(options: config_pb2.CallableOptions):
        mode = "caller" if options.run_options.inter_op_thread_pool == -1 else "pool"

        def fn(x):
            calls.append(mode)
            time.sleep(0.002 if mode == "pool" else 0.0)
            return [x + 1]

        return fn

    tuned = TunedCallable(make, config_pb2.CallableOptions())
    for i in range(2 * TRIALS_PER_MODE + 5):
        assert tuned(i) == [i + 1]
    assert tuned.mode == "caller"
    assert calls[: 2 * TRIALS_PER_MODE].count("pool") == TRIALS_PER_MODE
    assert calls[2 * TRIALS_PER_MODE :] == ["caller"] * 5
