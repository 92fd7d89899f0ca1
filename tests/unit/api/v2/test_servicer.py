"""V2 over gRPC, in process: the handlers add_v2_service registers, driven with bytes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from serving.api.grpc.services import ActiveCalls
from serving.api.v2.servicer import SERVICE, add_v2_service
from serving.protos import v2_pb2 as pb
from tests.unit.api.grpc.test_services import Aborted, Context
from tests.unit.api.v2.test_rest_routes import FakeV2


class Server:
    """What add_v2_service uses of grpc.aio.Server."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handlers.extend(handlers)

    def behavior(self, method: str) -> Any:
        details = SimpleNamespace(method=f"/{SERVICE}/{method}", invocation_metadata=())
        for handler in self.handlers:
            found = handler.service(details)
            if found is not None:
                return found.unary_unary
        return None


def _infer(model: str) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[3.0]], np.float32).tobytes())
    return request.SerializeToString()


@pytest.fixture
def served() -> tuple[Server, ActiveCalls]:
    server, active = Server(), ActiveCalls()
    add_v2_service(server, FakeV2(), active)  # type: ignore[arg-type]
    return server, active


def test_v2_calls_are_counted_in_the_servers_active_calls(served) -> None:
    server, active = served
    infer = server.behavior("ModelInfer")
    seen: list[int] = []

    async def run() -> None:
        task = asyncio.ensure_future(infer(_infer("slow"), Context()))  # the fake sleeps
        await asyncio.sleep(0.05)
        seen.append(active.count)
        assert not await active.wait_idle(0)  # a drain would wait for it
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        seen.append(active.count)
        answer = await infer(_infer("m"), Context())
        response = pb.ModelInferResponse.FromString(answer)
        assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [6.0]
        seen.append(active.count)

    asyncio.run(run())
    assert seen == [1, 0, 0]


def test_errors_unparsable_bytes_and_unserved_methods(served) -> None:
    server, _ = served
    context = Context()
    with pytest.raises(Aborted):
        asyncio.run(server.behavior("ModelInfer")(_infer("nope"), context))
    assert context.status == (grpc.StatusCode.NOT_FOUND, "Servable not found")
    context = Context()
    with pytest.raises(Aborted):
        asyncio.run(server.behavior("ModelInfer")(b"\xff\xff", context))
    assert context.status is not None and context.status[0] == grpc.StatusCode.INTERNAL
    live = asyncio.run(server.behavior("ServerLive")(b"", Context()))
    assert pb.ServerLiveResponse.FromString(live).live
    # Not served: gRPC answers UNIMPLEMENTED for a method without a handler.
    for method in ("ModelStreamInfer", "ModelConfig", "ModelStatistics"):
        assert server.behavior(method) is None
