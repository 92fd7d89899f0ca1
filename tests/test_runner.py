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
    def __init__(self) -> None:
        self.delay = 0.0
        self.threads: list[str] = []

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
        servable.delay = 0.05  # the model got slow: one inline call, then the pool
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
