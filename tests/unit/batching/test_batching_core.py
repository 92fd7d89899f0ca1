"""The batching core without a server: queues, padding, splitting, limits."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from serving.batching import params as bp
from serving.batching.params import BatchingConfigError, BatchOptions
from serving.batching.runner import BatchingRunner
from serving.errors import ServingError
from serving.servables.base import Servable
from serving.servables.signature import Signature, TensorSpec


def _spec(alias: str, shape) -> TensorSpec:
    return TensorSpec(alias, f"{alias}:0", 1, shape)


class HalfPlusTwo(Servable):
    """y = 0.5 x + 2 in NumPy; records every batch it is given."""

    def __init__(self, delay: float = 0.0, total: bool = False) -> None:
        sig = Signature(
            "serving_default", "", {"x": _spec("x", (-1, 1))}, {"y": _spec("y", (-1, 1))}
        )
        super().__init__("hp2", 1, "/nonexistent", {}, "serving_default", "")
        self.signatures = {"serving_default": sig}
        self.delay = delay
        self.total = total  # output the sum (not batch-shaped)
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def run(self, signature, inputs, output_aliases):
        x = inputs["x"]
        with self.lock:
            self.batches.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        y = np.asarray(x.sum(), np.float32) if self.total else x * 0.5 + 2
        return {"y": y}

    def close(self) -> None:
        pass


def _runner(**options) -> BatchingRunner:
    options.setdefault("num_batch_threads", 1)
    return BatchingRunner(BatchOptions(**options), ThreadPoolExecutor(2))


def _call(runner, servable, x):
    sig = servable.signatures["serving_default"]
    return runner.run(servable, sig, {"x": x}, ["y"])


def test_concurrent_requests_get_their_own_rows():
    servable = HalfPlusTwo(delay=0.005)
    runner = _runner(max_batch_size=16)

    async def main():
        xs = [np.full((1 + i % 3, 1), i, np.float32) for i in range(64)]
        outs = await asyncio.gather(*(_call(runner, servable, x) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out["y"], x * 0.5 + 2)

    asyncio.run(main())
    assert max(servable.batches) <= 16
    assert len(servable.batches) < 64  # requests were merged
    runner.close()


def test_fast_queue_runs_a_lone_request_at_once_and_still_merges_bursts():
    servable = HalfPlusTwo()  # fast: its batches run on the event loop
    runner = _runner(max_batch_size=32)

    async def main():
        loop = asyncio.get_running_loop()
        for i in range(20):  # one request per loop iteration
            out = await _call(runner, servable, np.full((1, 1), i, np.float32))
            np.testing.assert_array_equal(out["y"], [[i * 0.5 + 2]])
            await asyncio.sleep(0)
        lone = len(servable.batches)
        # The first request ran on a batch thread (the queue had no run times yet);
        # once fast, a lone request runs inside its own call, with no future.
        future = loop.create_future
        loop.create_future = None  # type: ignore[method-assign]
        try:
            await _call(runner, servable, np.ones((1, 1), np.float32))
        finally:
            loop.create_future = future  # type: ignore[method-assign]
        # Bursts: after the iteration's first request, the rest gather into
        # one batch, and once a burst was seen the whole next burst merges.
        for _ in range(2):
            xs = [np.full((1, 1), i, np.float32) for i in range(8)]
            outs = await asyncio.gather(*(_call(runner, servable, x) for x in xs))
            for x, out in zip(xs, outs, strict=True):
                np.testing.assert_array_equal(out["y"], x * 0.5 + 2)
            await asyncio.sleep(0)
        return lone

    lone = asyncio.run(main())
    assert servable.batches[:lone] == [1] * 20
    assert servable.batches[lone + 1 :] == [1, 7, 8]
    runner.close()


class RecordingMetrics:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.batches: list[tuple[int, int | None]] = []

    def set_queue_depth(self, model: str, signature: str, depth: int) -> None:
        pass

    def observe_queue_wait(self, model: str, signature: str, seconds: float) -> None:
        self.waits.append(seconds)

    def observe_batch(
        self, model: str, signature: str, size: int, padded_size: int | None = None
    ) -> None:
        self.batches.append((size, padded_size))

    def alone_recorder(self, model: str, signature: str):
        def record(rows: float) -> None:
            self.observe_batch(model, signature, int(rows), int(rows))
            self.observe_queue_wait(model, signature, 0.0)

        return record


def test_a_lone_request_is_counted_as_a_batch_of_one_and_an_unbatchable_one_still_found():
    metrics = RecordingMetrics()
    runner = BatchingRunner(
        BatchOptions(max_batch_size=32, num_batch_threads=1), ThreadPoolExecutor(2), metrics=metrics
    )
    servable = HalfPlusTwo()

    async def main():
        for _ in range(5):  # one request per loop iteration: the later ones run alone
            await _call(runner, servable, np.ones((2, 1), np.float32))
            await asyncio.sleep(0)
        servable.total = True  # outputs stop following the batch
        out = await _call(runner, servable, np.ones((2, 1), np.float32))
        assert out["y"].shape == ()  # a batch of its own: the answer is the unbatched one
        await asyncio.sleep(0)
        await _call(runner, servable, np.ones((2, 1), np.float32))  # now unbatched: no metrics

    asyncio.run(main())
    assert metrics.batches == [(2, 2)] * 6  # every request, alone or not, one batch of 2 rows
    assert len(metrics.waits) == 6 and all(w >= 0 for w in metrics.waits)
    assert metrics.waits[-1] == 0.0  # ran inside its own call: no wait
    runner.close()


def test_the_only_request_in_the_server_runs_alone_without_marking_the_iteration():
    inflight = [1]
    runner = BatchingRunner(
        BatchOptions(max_batch_size=32, num_batch_threads=1),
        ThreadPoolExecutor(2),
        inflight=lambda: inflight[0],
    )
    servable = HalfPlusTwo()

    async def main():
        for _ in range(4):  # the queue learns it is fast, then runs requests at once
            await _call(runner, servable, np.ones((1, 1), np.float32))
            await asyncio.sleep(0)
        batches = len(servable.batches)
        await _call(runner, servable, np.ones((1, 1), np.float32))
        assert len(servable.batches) == batches + 1
        assert not runner._wake_pending  # nothing to clear at the end of the iteration
        inflight[0] = 3  # others in flight: they may join, so the iteration is marked
        await _call(runner, servable, np.ones((1, 1), np.float32))
        assert runner._wake_pending
        # ...and a burst in one iteration still forms a batch behind the first request.
        await asyncio.sleep(0)
        burst = len(servable.batches)
        xs = [np.full((1, 1), float(i), np.float32) for i in range(4)]
        outs = await asyncio.gather(*(_call(runner, servable, x) for x in xs))
        assert [float(o["y"][0, 0]) for o in outs] == [0.5 * i + 2 for i in range(4)]
        assert servable.batches[burst:] == [1, 3]

    asyncio.run(main())
    runner.close()


def test_padding_to_allowed_sizes_never_leaks():
    servable = HalfPlusTwo(delay=0.01)
    runner = _runner(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))

    async def main():
        xs = [np.full((1, 1), i, np.float32) for i in range(11)]
        outs = await asyncio.gather(*(_call(runner, servable, x) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            assert out["y"].shape == (1, 1)
            np.testing.assert_array_equal(out["y"], x * 0.5 + 2)

    asyncio.run(main())
    assert set(servable.batches) <= {2, 4, 8}
    runner.close()


def test_timeout_gathers_a_batch_and_bounds_a_lone_request():
    servable = HalfPlusTwo()
    runner = _runner(max_batch_size=32, batch_timeout_micros=100_000)

    async def main():
        started = time.monotonic()
        await _call(runner, servable, np.ones((1, 1), np.float32))
        lone = time.monotonic() - started
        assert 0.09 <= lone < 0.5, lone
        await asyncio.gather(
            *(_call(runner, servable, np.ones((1, 1), np.float32)) for _ in range(5))
        )

    asyncio.run(main())
    assert servable.batches == [1, 5]
    runner.close()


def test_oversize_rejected_without_splitting_and_split_with_it():
    servable = HalfPlusTwo()
    x = np.arange(20, dtype=np.float32).reshape(20, 1)
    runner = _runner(max_batch_size=8)
    with pytest.raises(ServingError) as info:
        asyncio.run(_call(runner, servable, x))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "Task size 20 is larger than maximum input batch size 8"
    runner.close()

    runner = _runner(
        max_batch_size=64,
        enable_large_batch_splitting=True,
        max_execution_batch_size=8,
        allowed_batch_sizes=(4, 8),
    )
    out = asyncio.run(_call(runner, servable, x))
    np.testing.assert_array_equal(out["y"], x * 0.5 + 2)
    assert servable.batches == [8, 8, 4]
    runner.close()


def test_full_queue_is_unavailable_at_once():
    servable = HalfPlusTwo(delay=0.2)
    runner = _runner(max_batch_size=1, max_enqueued_batches=2)

    async def main():
        calls = [
            asyncio.ensure_future(_call(runner, servable, np.ones((1, 1), np.float32)))
            for _ in range(6)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, ServingError)]
        assert errors and all(e.code == grpc.StatusCode.UNAVAILABLE for e in errors)
        assert "max_enqueued_batches is 2" in errors[0].message
        assert len(results) - len(errors) >= 2

    asyncio.run(main())
    runner.close()


def test_outputs_not_following_the_batch_stop_batching():
    servable = HalfPlusTwo(delay=0.02, total=True)
    runner = _runner(max_batch_size=8)

    async def main():
        xs = [np.full((1, 1), i, np.float32) for i in range(4)]
        first = await asyncio.gather(
            *(_call(runner, servable, x) for x in xs), return_exceptions=True
        )
        failed = [r for r in first if isinstance(r, ServingError)]
        for r in failed:
            assert r.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "Batched output tensor" in r.message and "unbatched" in r.message
        later = await asyncio.gather(*(_call(runner, servable, x) for x in xs))
        for x, out in zip(xs, later, strict=True):
            assert float(out["y"]) == float(x.sum())  # each ran on its own

    asyncio.run(main())
    runner.close()


def test_variable_length_inputs_are_padded_with_the_first_element():
    servable = HalfPlusTwo(delay=0.01)
    runner = _runner(max_batch_size=8, pad_variable_length_inputs=True)

    async def main():
        a = np.array([[1, 2, 3]], np.float32)
        b = np.array([[7]], np.float32)
        c = np.array([[4, 5]], np.float32)
        outs = await asyncio.gather(*(_call(runner, servable, v) for v in (a, b, c)))
        np.testing.assert_array_equal(outs[0]["y"], a * 0.5 + 2)
        # Padded to the longest row, pad value = the tensor's first element.
        assert outs[1]["y"].shape[0] == 1
        np.testing.assert_array_equal(outs[1]["y"][0, :1], [5.5])

    asyncio.run(main())
    runner.close()


def test_params_text_and_validation(tmp_path):
    text = (
        "max_batch_size { value: 8 } batch_timeout_micros { value: 500 } "
        "allowed_batch_sizes: 2 allowed_batch_sizes: 8 pad_variable_length_inputs: true"
    )
    options = bp.parse_text(text)
    assert options.max_batch_size == 8 and options.batch_timeout_micros == 500
    assert options.allowed_batch_sizes == (2, 8) and options.pad_variable_length_inputs
    assert options.padded_size(3) == 8 and options.padded_size(1) == 2
    with pytest.raises(BatchingConfigError, match="Last entry in allowed_batch_sizes"):
        bp.parse_text("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    with pytest.raises(BatchingConfigError, match="not a valid"):
        bp.parse_text("max_batch_size: nonsense")
    defaults = BatchOptions()
    assert (
        defaults.max_batch_size,
        defaults.batch_timeout_micros,
        defaults.max_enqueued_batches,
    ) == (1000, 0, 10)
    (tmp_path / bp.PER_MODEL_FILE).write_text("max_batch_size { value: 4 }")
    server_wide = BatchOptions(num_batch_threads=3, max_batch_size=64)
    per_model = bp.per_model(str(tmp_path), server_wide)
    assert per_model.max_batch_size == 4 and per_model.num_batch_threads == 3
    assert bp.per_model(str(tmp_path / "nope"), server_wide) is server_wide
