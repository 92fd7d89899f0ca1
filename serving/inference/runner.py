"""How a signature call leaves the event loop.

`DirectRunner` hands each call to a thread pool (TensorFlow releases the GIL
while it computes). The batching layer provides another Runner that merges
concurrent calls; the inference code does not care which one it has.
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, servable.run, signature, inputs, outputs)
