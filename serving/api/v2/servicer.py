"""`inference.GRPCInferenceService` (V2 over gRPC) on the same grpc.aio server as
TF Serving's PredictionService and ModelService.

The messages are compiled from the protocol's published `grpc_service.proto`
(protos/). Inputs arrive as typed `contents` or as `raw_input_contents`
(every input raw, or none); outputs always go back as `raw_output_contents`,
which every V2 client reads and which costs no per-element conversion.
Streaming, model config/statistics, shared memory, tracing and logging RPCs
are not served (UNIMPLEMENTED, gRPC's answer for a method without a handler).

The methods are registered like TF Serving's (serving.api.grpc.services
`add_raw_service`): parsed and serialized by us, large messages off the event
loop, and every call counted in the server's ActiveCalls from its first byte
to its answer, so a drain waits for V2 calls as for the others.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message

from serving.api.grpc.services import ActiveCalls, add_raw_service, status_message
from serving.api.v2 import codec
from serving.api.v2.service import V2Service
from serving.errors import ServingError, invalid_argument
from serving.protos import v2_pb2 as pb

PROTOCOL = "v2-grpc"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _aborting(handler: Handler) -> Handler:
    """A ServingError becomes the call's status (message truncated as TF Serving does)."""

    @functools.wraps(handler)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except ServingError as exc:
            await context.abort(exc.code, status_message(exc.message))

    return call


def _param(value: Any) -> Any:
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: "
            "send every input raw, or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise invalid_argument(f"input '{name}' appears twice")
        if raw:
            inputs[name] = codec.from_raw(raw[index], tensor.datatype, list(tensor.shape), name)
        else:
            inputs[name] = codec.from_contents(tensor, name)
    return inputs


def encode_response(
    name: str, version: str, outputs: dict[str, np.ndarray], request_id: str
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id)
    for alias, array in outputs.items():
        tensor = response.outputs.add()
        tensor.name = alias
        tensor.datatype = codec.datatype_of(array)
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(codec.raw_of(array))
    return response


class V2Servicer:
    def __init__(self, v2: V2Service) -> None:
        self.v2 = v2

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.v2.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.v2.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=self.v2.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.v2.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    @_aborting
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async with self.v2.observe("model_metadata", PROTOCOL, request.name):
            meta = self.v2.model_metadata(request.name, request.version)
        response = pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for target, tensors in ((response.inputs, meta.inputs), (response.outputs, meta.outputs)):
            for t in tensors:
                target.add(name=t.name, datatype=t.datatype, shape=t.shape)
        return response

    @_aborting
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async with self.v2.observe("predict", PROTOCOL, request.model_name):
            inputs = decode_inputs(request)
            parameters = {k: _param(v) for k, v in request.parameters.items()}
            outputs = [o.name for o in request.outputs]
            result = await self.v2.infer(
                request.model_name, request.model_version, inputs, outputs, parameters
            )
            return encode_response(result.name, str(result.version), result.outputs, request.id)

    @_aborting
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async with self.v2.observe("repository_index", PROTOCOL, None):
            entries = await self.v2.repository_index(request.ready)
        response = pb.RepositoryIndexResponse()
        for e in entries:
            response.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
        return response

    @_aborting
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async with self.v2.observe("repository_load", PROTOCOL, None):
            base_path = None
            if "base_path" in request.parameters:
                base_path = _param(request.parameters["base_path"])
                if not isinstance(base_path, str):
                    raise invalid_argument("parameter base_path must be a string")
            await self.v2.repository_load(request.model_name, base_path)
        return pb.RepositoryModelLoadResponse()

    @_aborting
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async with self.v2.observe("repository_unload", PROTOCOL, None):
            await self.v2.repository_unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


# The methods served: name → request message type.
_METHODS: dict[str, type[Message]] = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
    "RepositoryIndex": pb.RepositoryIndexRequest,
    "RepositoryModelLoad": pb.RepositoryModelLoadRequest,
    "RepositoryModelUnload": pb.RepositoryModelUnloadRequest,
}


def _response_size(response: Message) -> int:
    """The bulk of a response, which decides where it is serialized."""
    if isinstance(response, pb.ModelInferResponse):
        return sum(len(raw) for raw in response.raw_output_contents)
    return 0


def add_v2_service(
    server: grpc.aio.Server, v2: V2Service, active: ActiveCalls | None = None
) -> None:
    add_raw_service(server, SERVICE, V2Servicer(v2), _METHODS, active, _response_size)
