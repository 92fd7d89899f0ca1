"""How a signature call leaves the event loop.

`DirectRunner` hands calls to a thread pool (TensorFlow releases the GIL
while it computes). A call that reliably takes a few tens of microseconds
(half_plus_two takes ~40 µs) costs more in the two thread hand-offs than in
TensorFlow, so such calls run inline on the event loop: each (servable,
signature) keeps a moving average of its run time, and only signatures under
`inline_below_s` with small inputs run inline. One slow call lifts the
average and sends the next ones back to the pool, so a heavy model never
holds the loop for more than one call.

The batching layer provides another Runner that merges concurrent calls; the
inference code does not care which one it has.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from serving.servables.base import Servable
from serving.servables.signature import Signature


class Runner(Protocol):
    async def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]: ...


class DirectRunner:
    def __init__(
        self,
        executor: Executor,
        *,
        inline_below_s: float = 150e-6,
        inline_max_elements: int = 4096,
        smoothing: float = 0.2,
    ) -> None:
        self._executor = executor
        self._inline_below = inline_below_s
        self._inline_max_elements = inline_max_elements
        self._alpha = smoothing
        # servable → signature key → moving average of run seconds.
        self._costs: weakref.WeakKeyDictionary[Servable, dict[str, float]] = (
            weakref.WeakKeyDictionary()
        )

    async def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        costs = self._costs.setdefault(servable, {})
        cost = costs.get(signature.key)
        small = sum(a.size for a in inputs.values()) <= self._inline_max_elements
        if cost is not None and cost < self._inline_below and small:
            return self._timed(servable, signature, inputs, outputs, costs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._timed, servable, signature, inputs, outputs, costs
        )

    def _timed(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        costs: dict[str, float],
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return servable.run(signature, inputs, outputs)
        finally:
            took = time.perf_counter() - started
            previous = costs.get(signature.key)
            costs[signature.key] = (
                took if previous is None else previous + self._alpha * (took - previous)
            )
