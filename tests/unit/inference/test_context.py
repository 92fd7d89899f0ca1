"""RequestContext: the one place a request's outcome becomes a canonical code."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import pytest

from serving.errors import ServingError, not_found
from serving.inference.context import RequestContext
from tests.unit.small_service import RecordingObserver


def _run(body, *, timeout_s: float | None = None, observer: RecordingObserver | None = None):
    observer = observer if observer is not None else RecordingObserver()

    async def scenario():
        async with RequestContext(observer, "predict", "grpc", "m", timeout_s):
            return await body()

    return observer, asyncio.run(scenario())


async def _ok() -> str:
    await asyncio.sleep(0)
    return "done"


async def _not_found() -> None:
    raise not_found("Servable not found for request: Latest(m)")


async def _bug() -> None:
    raise KeyError("surprise")


async def _slow() -> None:
    await asyncio.sleep(5)


def test_success_is_ok_and_returns_the_result() -> None:
    observer, result = _run(_ok)
    assert result == "done"
    assert observer.finished == [("predict", "grpc", "m", "OK")]


def test_a_serving_error_keeps_its_code_and_message() -> None:
    with pytest.raises(ServingError) as err:
        _run(_not_found, observer=(observer := RecordingObserver()))
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.message == "Servable not found for request: Latest(m)"
    assert observer.finished == [("predict", "grpc", "m", "NOT_FOUND")]


def test_anything_else_is_internal_with_its_type_and_is_logged(caplog) -> None:
    observer = RecordingObserver()
    with caplog.at_level(logging.ERROR, "serving.request"), pytest.raises(ServingError) as err:
        _run(_bug, observer=observer)
    assert err.value.code == grpc.StatusCode.INTERNAL
    assert err.value.message == "KeyError: 'surprise'"
    assert isinstance(err.value.__cause__, KeyError)
    assert observer.finished == [("predict", "grpc", "m", "INTERNAL")]
    assert "grpc predict failed" in caplog.text and "KeyError" in caplog.text


def test_the_time_limit_cancels_the_work_as_deadline_exceeded() -> None:
    observer = RecordingObserver()
    with pytest.raises(ServingError) as err:
        _run(_slow, timeout_s=0.02, observer=observer)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.message == "Deadline Exceeded"
    assert err.value.http_status == 504
    assert observer.finished == [("predict", "grpc", "m", "DEADLINE_EXCEEDED")]


def test_concurrent_limits_expire_each_at_its_own_deadline() -> None:
    """Requests share one timer per loop: a later, shorter limit still fires first,
    requests that finish in time are never cancelled, expired ones one by one."""
    observer = RecordingObserver()
    ended: dict[str, float] = {}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def request(name: str, limit: float, work: float) -> None:
            try:
                async with RequestContext(observer, name, "rest", "m", limit):
                    await asyncio.sleep(work)
            except ServingError as exc:
                assert exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
            ended[name] = loop.time() - started

        await asyncio.gather(
            request("long", 0.30, 5),
            request("quick", 5.0, 0.01),  # finishes in time
            request("short", 0.05, 5),  # added after a later deadline
            request("middle", 0.15, 5),
        )

    asyncio.run(scenario())
    codes = {api: code for api, _p, _m, code in observer.finished}
    assert codes == {
        "long": "DEADLINE_EXCEEDED",
        "quick": "OK",
        "short": "DEADLINE_EXCEEDED",
        "middle": "DEADLINE_EXCEEDED",
    }
    assert ended["quick"] < ended["short"] < ended["middle"] < ended["long"] < 1.0
    assert 0.05 <= ended["short"] < 0.15 <= ended["middle"] < 0.30 <= ended["long"]


def test_no_time_limit_no_timer() -> None:
    observer, result = _run(_ok, timeout_s=None)
    assert observer.finished == [("predict", "grpc", "m", "OK")]
    assert result == "done"


def test_a_cancellation_from_outside_is_cancelled_and_propagates() -> None:
    observer = RecordingObserver()

    async def scenario() -> None:
        async def request() -> None:
            async with RequestContext(observer, "classify", "rest", "m", 10.0):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.01)
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert observer.finished == [("classify", "rest", "m", "CANCELLED")]


def test_a_cancellation_once_the_limit_has_passed_is_deadline_exceeded() -> None:
    """The limit and an outside cancellation both land while the work holds the loop."""
    observer = RecordingObserver()

    async def scenario() -> None:
        async def request() -> None:
            async with RequestContext(observer, "predict", "rest", "m", 0.01):
                time.sleep(0.05)  # blocking: the limit's timer cannot fire yet
                await asyncio.sleep(5)

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_later(0.02, task.cancel)
        with pytest.raises((asyncio.CancelledError, ServingError)):
            await task

    asyncio.run(scenario())
    assert observer.finished == [("predict", "rest", "m", "DEADLINE_EXCEEDED")]


def test_a_refused_start_is_reported_and_never_finished() -> None:
    observer = RecordingObserver(draining=True)
    with pytest.raises(ServingError) as err:
        _run(_ok, observer=observer)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert observer.finished == []


def test_without_an_observer_codes_are_still_mapped() -> None:
    async def scenario() -> None:
        async with RequestContext(None, "predict", "grpc", None):
            raise ValueError("bad")

    with pytest.raises(ServingError) as err:
        asyncio.run(scenario())
    assert err.value.code == grpc.StatusCode.INTERNAL
