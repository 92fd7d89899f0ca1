"""`BatchingRunner`: the Runner the inference layer uses when --enable_batching is on.

Each call lands in the queue for its (servable instance, signature, output
aliases, input names/dtypes/trailing shapes); requests that cannot be
batched (no inputs, scalar inputs, unequal or zero dim 0, signatures whose
outputs turned out not to follow the batch) run unbatched on the executor.

The caller (InferenceService) holds the servable handle across the await,
so a version being unloaded first drains its queued requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor

import numpy as np

from serving.batching import params as bp
from serving.batching.params import BatchOptions
from serving.batching.scheduler import BatchQueue, Scheduler, Task
from serving.batching.sink import BatchMetrics, NoMetrics
from serving.inference.runner import DirectRunner
from serving.servables.base import Servable
from serving.servables.signature import Signature

log = logging.getLogger(__name__)


class _ServableBatching:
    """One servable's queues and the signatures found not to batch."""

    __slots__ = ("__weakref__", "checked", "options", "queues", "unbatchable")

    def __init__(self, options: BatchOptions) -> None:
        self.options = options
        self.queues: dict[tuple, BatchQueue] = {}
        self.unbatchable: set[str] = set()
        self.checked: set[str] = set()

    def mark_unbatchable(self, signature_key: str, describe: str) -> None:
        if signature_key not in self.unbatchable:
            self.unbatchable.add(signature_key)
            log.warning(
                "%s: outputs do not follow the batch's dimension 0; running it unbatched",
                describe,
            )


def signature_batchable(signature: Signature) -> bool:
    """Static check: no inputs, or a declared scalar input or output, cannot batch."""
    if not signature.inputs:
        return False
    specs = [*signature.inputs.values(), *signature.outputs.values()]
    return all(spec.shape != () for spec in specs)


def layout(inputs: Mapping[str, np.ndarray], pad_variable: bool) -> tuple[int, tuple] | None:
    """(rows, queue key part) when the request can join a batch, else None."""
    if not inputs:
        return None
    rows = -1
    parts = []
    for alias, array in inputs.items():
        shape = array.shape
        if not shape:
            return None
        if rows < 0:
            rows = shape[0]
        elif shape[0] != rows:
            return None
        parts.append((alias, array.dtype, len(shape) if pad_variable else shape[1:]))
    if rows == 0:
        return None
    return rows, tuple(parts)


class BatchingRunner:
    def __init__(
        self,
        options: BatchOptions,
        executor: Executor,
        *,
        per_model_params: bool = False,
        metrics: BatchMetrics | None = None,
        inflight: Callable[[], int] | None = None,
    ) -> None:
        """`inflight`: requests the server is handling now, this one included
        (when it says 1, no other request can join a batch)."""
        self.options = options
        self._inflight = inflight
        self.per_model_params = per_model_params
        self._metrics: BatchMetrics = metrics if metrics is not None else NoMetrics()
        self._direct = DirectRunner(executor)
        self._scheduler = Scheduler(options.num_batch_threads, options.thread_pool_name)
        self._lock = threading.Lock()
        self._wake_pending = False
        # A request was queued in this loop iteration (a batch thread may be needed).
        self._queued = False
        # Fast queues that got requests in this loop iteration (drained inline).
        self._inline: list[BatchQueue] = []
        # Fast queues that ran a request alone in this loop iteration.
        self._alone: set[BatchQueue] = set()

    def prepare(self, servable: Servable) -> None:
        """At load time: pick the servable's batching options (per-model file if enabled).

        Raises BatchingConfigError for a bad `batching_params.pbtxt`, which
        fails the load as in TF Serving.
        """
        options = (
            bp.per_model(servable.path, self.options) if self.per_model_params else self.options
        )
        with self._lock:
            servable.memo[self] = _ServableBatching(options)

    def _state(self, servable: Servable) -> _ServableBatching:
        state: _ServableBatching | None = servable.memo.get(self)
        if state is None:
            with self._lock:
                state = servable.memo.get(self)
                if state is None:
                    state = servable.memo[self] = _ServableBatching(self.options)
        return state

    async def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        state = self._state(servable)
        found = layout(inputs, state.options.pad_variable_length_inputs)
        if signature.key not in state.checked:
            state.checked.add(signature.key)
            if not signature_batchable(signature):
                state.unbatchable.add(signature.key)
        if found is None or signature.key in state.unbatchable:
            return await self._direct.run(servable, signature, inputs, outputs)
        rows, parts = found
        key = (signature.key, tuple(outputs), parts)
        queue = state.queues.get(key)
        if queue is None:
            queue = state.queues[key] = BatchQueue(
                state.options, servable, signature, outputs, state.mark_unbatchable, self._metrics
            )
        if queue.inline and not queue.timeout and not queue.gathering:
            # With no batch timeout, the loop iteration's first request for a
            # fast queue runs at once; later ones in the same iteration queue
            # up and run as one batch. Once an iteration brings several, the
            # queue gathers them all until iterations bring one again.
            if self._inflight is not None and self._inflight() <= 1:
                # The only request in the server: nothing can join it, so it
                # runs without marking the iteration (no wake-up to clear it).
                alone = self._scheduler.run_alone(queue, inputs, rows)
                if alone is not None:
                    return alone
            elif queue not in self._alone and queue not in self._inline:
                alone = self._scheduler.run_alone(queue, inputs, rows)
                if alone is not None:
                    self._alone.add(queue)
                    if not self._wake_pending:
                        self._wake_pending = True
                        asyncio.get_running_loop().call_soon(self._wake)
                    return alone
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._scheduler.submit(queue, Task(inputs, rows, future))
        self._queued = True
        if queue.inline and queue not in self._inline:
            self._inline.append(queue)
        if not self._wake_pending:
            # One wake-up per loop iteration, after every request it carries.
            self._wake_pending = True
            loop.call_soon(self._wake)
        return await future

    def _wake(self) -> None:
        self._wake_pending = False
        alone = self._alone
        if self._inline:
            queues, self._inline = self._inline, []
            self._scheduler.run_inline(queues)
            for queue in queues:
                queue.gathering = queue.drained + (queue in alone) > 1
        alone.clear()
        if self._queued:  # an iteration of lone requests has nothing for the threads
            self._queued = False
            self._scheduler.wake()

    def close(self) -> None:
        scheduler = self._scheduler
        if scheduler.batches:
            log.info(
                "batching: %d requests in %d batches (%.1f per batch)",
                scheduler.tasks,
                scheduler.batches,
                scheduler.tasks / scheduler.batches,
            )
        scheduler.close()
