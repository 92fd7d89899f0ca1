"""Batch queues and the shared batch threads that drain them.

Modelled on TF Serving's SharedBatchScheduler:
- each queue holds a deque of batches; the last one is open and takes new
  requests, the others are closed and wait for a thread;
- an open batch becomes runnable when it is full or its oldest request has
  waited `batch_timeout_micros` (at once with the default timeout of 0);
- `num_batch_threads` threads are shared by every queue of every model and
  take runnable batches round-robin across queues;
- a request that does not fit opens a new batch; when `max_enqueued_batches`
  are already waiting the request is refused with UNAVAILABLE at once, so
  memory stays bounded under overload.

Cost on the event loop per request: one lock and a list append. Wake-ups are
coalesced by the caller (one per event-loop iteration, not per request).

A batch thread merges, runs and splits a whole batch, then resolves all of
the batch's asyncio futures with one `call_soon_threadsafe`. A queue whose
batches reliably run in a few tens of microseconds (half_plus_two's do) is
instead drained on the event loop itself, once per loop iteration: there the
two thread hand-offs per batch (notify, GIL switch, loop wake-up) cost more
than the model, and a request that finds no other one runs at once instead
of waiting for a thread. Like `DirectRunner`, the queue keeps its recent
batch run times and uses their minimum; one slow batch sends it back to the
threads. With no batch timeout, the first request an iteration brings to such
an idle queue runs at once inside its own call (`run_alone`): under gRPC load
requests reach the loop one per iteration, so those batches held one request
anyway and the queue's future and wake-up were pure cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import grpc
import numpy as np

from serving.batching.merge import (
    OutputMismatch,
    concat_pieces,
    merge_inputs,
    split_outputs,
)
from serving.batching.params import BatchOptions
from serving.batching.sink import BatchMetrics
from serving.errors import ServingError, invalid_argument
from serving.servables.base import Servable
from serving.servables.signature import Signature

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
# (future, outputs or None, error or None), resolved on the future's loop.
Resolution = tuple[asyncio.Future, Outputs | None, ServingError | None]

# A queue whose fastest recent batch ran under this runs on the event loop.
INLINE_BELOW_S = 150e-6
INLINE_WINDOW = 16
# One batch over this sends the queue back to the batch threads at once.
INLINE_EVICT_S = 8 * INLINE_BELOW_S


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


class SplitRequest:
    """A request that large-batch splitting spread over several batches."""

    __slots__ = ("error", "future", "lock", "pieces", "remaining")

    def __init__(self, future: asyncio.Future, n: int) -> None:
        self.future = future
        self.pieces: list[Outputs | None] = [None] * n
        self.remaining = n
        self.error: ServingError | None = None
        self.lock = threading.Lock()

    def piece_done(
        self, index: int, value: Outputs | None, error: ServingError | None
    ) -> Resolution | None:
        """Record one piece; the last one returns the whole request's resolution."""
        with self.lock:
            self.pieces[index] = value
            if error is not None and self.error is None:
                self.error = error
            self.remaining -= 1
            if self.remaining:
                return None
        if self.error is not None:
            return self.future, None, self.error
        return self.future, concat_pieces(self.pieces), None  # type: ignore[arg-type]


class Task:
    """One request (or one piece of a split request) waiting in a queue."""

    __slots__ = ("enqueued", "future", "index", "inputs", "size", "split")

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        size: int,
        future: asyncio.Future | None,
        split: SplitRequest | None = None,
        index: int = 0,
    ) -> None:
        self.inputs = inputs
        self.size = size
        self.future = future
        self.split = split
        self.index = index
        self.enqueued = 0.0


class Batch:
    __slots__ = ("opened", "size", "tasks")

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self.size = 0
        self.opened = 0.0

    def add(self, task: Task, now: float) -> None:
        if not self.tasks:
            self.opened = now
        task.enqueued = now
        self.tasks.append(task)
        self.size += task.size


class BatchQueue:
    """Requests for one (servable, signature, outputs, input layout).

    `add`, `take` and `deadline` run under the scheduler's lock; `process`
    runs on a batch thread without it.
    """

    def __init__(
        self,
        options: BatchOptions,
        servable: Servable,
        signature: Signature,
        outputs: Sequence[str],
        on_unbatchable: Callable[[str, str], None],
        metrics: BatchMetrics,
    ) -> None:
        self.options = options
        self._metrics = metrics
        self.limit = options.execution_batch_size
        self.timeout = options.timeout_s
        # Weak: queues live in a per-servable table that must not keep an
        # unloaded servable alive. Queued requests hold it strongly.
        self._servable = weakref.ref(servable)
        self.signature = signature
        self.outputs = list(outputs)
        self._on_unbatchable = on_unbatchable
        self.batches: deque[Batch] = deque([Batch()])
        self.describe = f"{servable.name} version {servable.version} signature {signature.key!r}"
        self.model = servable.name
        self.pads = bool(options.allowed_batch_sizes)
        self._record_alone = metrics.alone_recorder(self.model, signature.key)
        # Recent batch run times (seconds): `inline` says whether the event
        # loop may run this queue's batches itself (see the module docstring).
        self._runs: deque[float] = deque(maxlen=INLINE_WINDOW)
        self.inline = False
        # Set by the runner when one loop iteration brought this queue two or
        # more requests: then a lone request queues instead of running at once.
        self.gathering = False
        self.drained = 0  # requests the last `run_inline` ran from this queue

    # ------------------------------------------------------- under the lock

    def add(self, task: Task, now: float) -> None:
        opts = self.options
        if task.size > opts.max_batch_size:
            raise invalid_argument(
                f"Task size {task.size} is larger than maximum input batch size "
                f"{opts.max_batch_size}"
            )
        batches = self.batches
        open_batch = batches[-1]
        room = self.limit - open_batch.size
        if task.size <= room:
            open_batch.add(task, now)
            return
        if not opts.enable_large_batch_splitting:
            if len(batches) >= opts.max_enqueued_batches:
                raise unavailable(
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"currently {len(batches)} batches enqueued and max_enqueued_batches is "
                    f"{opts.max_enqueued_batches}"
                )
            batch = Batch()
            batch.add(task, now)
            batches.append(batch)
            return
        capacity = (opts.max_enqueued_batches - len(batches)) * self.limit + room
        if task.size > capacity:
            raise unavailable(
                "The batch scheduling queue to which this task was submitted is full; "
                f"task size is {task.size} but scheduling capacity is only {capacity} "
                f"(num_enqueued_batches={len(batches)}, "
                f"max_enqueued_batches={opts.max_enqueued_batches}, "
                f"open_batch_size={open_batch.size}, "
                f"max_execution_batch_size={self.limit})"
            )
        self._add_split(task, room, now)

    def _add_split(self, task: Task, room: int, now: float) -> None:
        sizes = [room] if room else []
        left = task.size - room
        while left > 0:
            sizes.append(min(left, self.limit))
            left -= sizes[-1]
        assert task.future is not None
        split = SplitRequest(task.future, len(sizes))
        start = 0
        for index, size in enumerate(sizes):
            piece = {a: v[start : start + size] for a, v in task.inputs.items()}
            start += size
            if self.batches[-1].size + size > self.limit:
                self.batches.append(Batch())
            self.batches[-1].add(Task(piece, size, None, split, index), now)

    def take(self, now: float) -> Batch | None:
        """The next runnable batch, if any."""
        batches = self.batches
        if len(batches) > 1:
            batch = batches.popleft()
        else:
            batch = batches[0]
            if not batch.size or (batch.size < self.limit and now < batch.opened + self.timeout):
                return None
            batches[0] = Batch()
        self.report_depth()
        return batch

    def report_depth(self) -> None:
        """Requests waiting in this queue, for the queue-depth gauge."""
        self._metrics.set_queue_depth(
            self.model, self.signature.key, sum(len(b.tasks) for b in self.batches)
        )

    def deadline(self) -> float | None:
        """When the next batch may run (0.0: now); None when nothing waits."""
        if len(self.batches) > 1:
            return 0.0
        head = self.batches[0]
        if not head.size:
            return None
        return head.opened + self.timeout

    def _timed(self, took: float) -> None:
        runs = self._runs
        if took > INLINE_EVICT_S:
            runs.clear()
            self.inline = False
            return
        runs.append(took)
        # Approximate under threads (two batches may race here); a stale
        # answer costs one batch on the wrong side, never a wrong result.
        self.inline = min(runs) < INLINE_BELOW_S

    def idle(self) -> bool:
        """Nothing waiting: a new request would start a batch of its own."""
        batches = self.batches
        return len(batches) == 1 and not batches[0].size

    # ------------------------------------------------------- on a batch thread

    def process(self, batch: Batch) -> list[Resolution]:
        results, error = self.execute(batch)
        return resolutions(batch.tasks, results, error)

    def run_one(self, inputs: Mapping[str, np.ndarray], rows: int) -> Outputs:
        """`execute` for one unpadded request on the caller's thread (`Scheduler.run_alone`):
        nothing to merge or split, so its errors are raised as they come."""
        self._record_alone(rows)
        return self._unsplit(self._run(inputs), rows)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> Outputs:
        """The servable's run on a whole batch, timed for the inline decision."""
        servable = self._servable()
        if servable is None:  # cannot happen while requests hold it; be safe
            raise unavailable(f"{self.describe} was unloaded")
        ran = time.perf_counter()
        out = servable.run(self.signature, inputs, self.outputs)
        self._timed(time.perf_counter() - ran)
        return out

    def _unsplit(self, out: Outputs, rows: int) -> Outputs:
        """A one-request, unpadded batch's answer, which is exactly the unbatched
        one; outputs that do not follow the batch stop later batching."""
        for value in out.values():  # a loop, not any(...): this runs per request
            if value.ndim == 0 or value.shape[0] != rows:
                self._on_unbatchable(self.signature.key, self.describe)
                break
        return out

    def execute(self, batch: Batch) -> tuple[list[Outputs], ServingError | None]:
        """Merge, run and split one batch: its per-task outputs, or the error for all."""
        tasks = batch.tasks
        rows = batch.size
        padded = self.options.padded_size(rows)
        started = time.monotonic()
        key = self.signature.key
        for task in tasks:
            self._metrics.observe_queue_wait(self.model, key, started - task.enqueued)
        self._metrics.observe_batch(self.model, key, rows, padded)
        error: ServingError | None = None
        results: list[Outputs] = []
        try:
            merged = merge_inputs(
                [t.inputs for t in tasks], rows, padded, self.options.pad_variable_length_inputs
            )
            out = self._run(merged)
            if len(tasks) == 1 and padded == rows:
                results = [self._unsplit(out, rows)]
            else:
                results = split_outputs(out, [t.size for t in tasks], padded)
        except OutputMismatch as exc:
            self._on_unbatchable(self.signature.key, self.describe)
            error = ServingError(
                exc.code,
                f"{exc.message} (signature {self.signature.key!r} cannot be batched; "
                "later requests to it run unbatched)",
            )
        except ServingError as exc:
            error = exc
        except Exception as exc:  # a bug here must not strand the requests
            log.exception("batch for %s failed", self.describe)
            error = ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return results, error


def resolutions(
    tasks: Sequence[Task], results: Sequence[Outputs], error: ServingError | None
) -> list[Resolution]:
    out: list[Resolution] = []
    for i, task in enumerate(tasks):
        value = results[i] if error is None else None
        if task.split is not None:
            done = task.split.piece_done(task.index, value, error)
            if done is not None:
                out.append(done)
        else:
            assert task.future is not None
            out.append((task.future, value, error))
    return out


def _resolve(items: list[Resolution]) -> None:
    """On the event loop: hand each request its answer (skipping cancelled ones)."""
    for future, value, error in items:
        if future.done():
            continue
        if error is not None:
            # A fresh exception per request: tracebacks must not be shared.
            future.set_exception(ServingError(error.code, error.message))
        else:
            future.set_result(value)


class Scheduler:
    """`num_batch_threads` threads shared by all queues (TF Serving's model)."""

    def __init__(self, num_threads: int, name: str = "batch_threads") -> None:
        # Per-request paths (`submit`, `run_alone`) take the lock itself: the
        # Condition's own enter/exit are Python calls.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._max_threads = num_threads
        self._name = name
        self._threads: list[threading.Thread] = []
        self._idle = 0
        # Queues with waiting requests, in round-robin order (dict as ordered set).
        self._active: dict[BatchQueue, None] = {}
        self._closed = False
        # Counters for logs and benchmarks (approximate under contention).
        self.batches = 0
        self.tasks = 0

    def submit(self, queue: BatchQueue, task: Task) -> None:
        """Enqueue or raise (INVALID_ARGUMENT too large, UNAVAILABLE queue full).

        Does not wake a thread: the caller calls `wake` once for all the
        requests it submitted in one go (one event-loop iteration), so a burst
        of requests costs one thread wake-up and lands in one batch.
        """
        with self._lock:
            if self._closed:
                raise unavailable("the server is shutting down")
            queue.add(task, time.monotonic())
            self._active[queue] = None
            queue.report_depth()

    def run_alone(
        self, queue: BatchQueue, inputs: Mapping[str, np.ndarray], rows: int
    ) -> Outputs | None:
        """On the event loop: run one request at once as a batch of its own, if its queue is idle.

        None when something is already waiting (the request must queue behind
        it) or the request does not fit one unpadded batch. For a fast queue
        whose requests arrive one per loop iteration (gRPC under load), every
        batch holds one request anyway; running it here skips the task, the
        future, the wake-up and the extra loop iteration a queued request
        costs, and records the same batch metrics.
        """
        with self._lock:
            if self._closed:
                raise unavailable("the server is shutting down")
            if (
                rows > queue.limit
                or not queue.idle()
                or (queue.pads and queue.options.padded_size(rows) != rows)
            ):
                return None
        self.batches += 1
        self.tasks += 1
        return queue.run_one(inputs, rows)

    def run_inline(self, queues: list[BatchQueue]) -> None:
        """On the event loop: run the runnable batches of fast queues right here.

        What is not runnable yet (a batch waiting for its timeout) stays for
        the threads, which `wake` then calls.
        """
        for queue in queues:
            queue.drained = 0
            while True:
                with self._cond:
                    batch = queue.take(time.monotonic())
                    if batch is None:
                        break
                    if queue.deadline() is None:
                        self._active.pop(queue, None)
                items = queue.process(batch)
                self.batches += 1
                self.tasks += len(batch.tasks)
                queue.drained += len(batch.tasks)
                _resolve(items)

    def wake(self) -> None:
        """Get a batch thread looking at the queues (it re-reads deadlines too)."""
        with self._cond:
            if not self._active:
                return
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < self._max_threads and self._active:
                self._spawn()

    def _spawn(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _pick(self, now: float) -> tuple[tuple[BatchQueue, Batch] | None, float | None]:
        earliest: float | None = None
        for queue in list(self._active):
            batch = queue.take(now)
            if batch is not None:
                # Round robin: this queue goes to the back of the line.
                del self._active[queue]
                if queue.deadline() is not None:
                    self._active[queue] = None
                return (queue, batch), None
            deadline = queue.deadline()
            if deadline is None:
                del self._active[queue]
            elif earliest is None or deadline < earliest:
                earliest = deadline
        return None, None if earliest is None else max(0.0, earliest - now)

    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    picked, wait = self._pick(time.monotonic())
                    if picked is not None:
                        break
                    if self._closed and not self._active:
                        return
                    self._idle += 1
                    cond.wait(wait)
                    self._idle -= 1
                if self._active:
                    # More may be runnable: pass the baton to another thread.
                    if self._idle:
                        cond.notify()
                    elif len(self._threads) < self._max_threads:
                        self._spawn()
            queue, batch = picked
            items = queue.process(batch)
            self.batches += 1
            self.tasks += len(batch.tasks)
            deliver(items)

    def close(self) -> None:
        """Stop the threads once the queues are empty (queued requests still run)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def deliver(items: list[Resolution]) -> None:
    """One thread hop per event loop per batch."""
    if not items:
        return
    loops: dict[asyncio.AbstractEventLoop, list[Resolution]] = {}
    for item in items:
        loops.setdefault(item[0].get_loop(), []).append(item)
    for loop, batch in loops.items():
        # A closed loop has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, batch)
