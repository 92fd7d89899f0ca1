"""How a signature call leaves the event loop.

`DirectRunner` hands calls to a thread pool (TensorFlow releases the GIL
while it computes). A call that reliably takes a few tens of microseconds
(half_plus_two's does) costs more in the two thread hand-offs than in
TensorFlow, so such calls run inline on the event loop: each (servable,
signature) keeps its recent run times, and only signatures whose fastest
recent run is under `inline_below_s`, with small inputs, run inline. The
minimum, not an average: under load a call's wall time includes its wait for
the GIL, which says nothing about the signature, and an average of such waits
could keep a fast signature on the pool. A call over `evict_factor` times the
threshold forgets the fast runs, so a model that turns heavy holds the loop
for one call only.

The batching layer provides another Runner that merges concurrent calls; the
inference code does not care which one it has.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
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
        window: int = 16,
        evict_factor: float = 8.0,
    ) -> None:
        self._executor = executor
        self._inline_below = inline_below_s
        self._inline_max_elements = inline_max_elements
        self._window = window
        self._evict_above = inline_below_s * evict_factor

    async def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        # servable.memo[self]: signature key → recent run seconds (newest last).
        per_signature: dict[str, deque[float]] | None = servable.memo.get(self)
        if per_signature is None:
            per_signature = servable.memo.setdefault(self, {})
        runs = per_signature.get(signature.key)
        if runs is None:
            runs = per_signature.setdefault(signature.key, deque(maxlen=self._window))
        if (
            runs
            and min(runs) < self._inline_below
            and sum(a.size for a in inputs.values()) <= self._inline_max_elements
        ):
            return self._timed(servable, signature, inputs, outputs, runs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._timed, servable, signature, inputs, outputs, runs
        )

    def _timed(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        runs: deque[float],
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return servable.run(signature, inputs, outputs)
        finally:
            took = time.perf_counter() - started
            if took > self._evict_above:
                runs.clear()  # heavy now: the pool until fast runs come back
            runs.append(took)
