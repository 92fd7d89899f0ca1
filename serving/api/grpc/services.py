"""PredictionService and ModelService over grpc.aio, as thin adapters.

Each RPC decodes its request (serving.api.grpc.codec), calls the
InferenceService inside `service.observe(...)` (metrics, canonical error
codes) and encodes the result. The only gRPC-specific error handling left is
turning the canonical code into the call's status (`rpc`).

The methods are registered with pass-through (de)serializers (`add_services`):
we parse and serialize ourselves, so that bytes which do not parse get
gRPC's C++ answer (INTERNAL) rather than grpc.aio's, and so that a large
message is parsed, converted and serialized on a worker thread instead of the
event loop every other call shares.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.api.grpc import codec
from serving.api.messages import SIGNATURE_DEF, fill_spec, signature_def_map, status_response
from serving.errors import ServingError, invalid_argument
from serving.inference.service import InferenceService, InferenceTask

log = logging.getLogger("serving")

PROTOCOL = "grpc"
_MAX_MESSAGE = 1024  # TF Serving truncates longer status messages
# Messages and tensors above this size are parsed, converted and serialized
# on a worker thread: below it the hand-off costs more than the work.
OFFLOAD_BYTES = 1 << 20

# (servicer, request message, context) -> response message
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_message(message: str) -> str:
    if len(message) > _MAX_MESSAGE:
        return message[:_MAX_MESSAGE] + "...TRUNCATED"
    return message


def _spec_name(request: Any) -> str:
    return request.model_spec.name


def _first_task_name(request: inference_pb2.MultiInferenceRequest) -> str | None:
    return request.tasks[0].model_spec.name if request.tasks else None


def _no_model(request: Any) -> None:
    return None


def rpc(
    api: str, model_of: Callable[[Any], str | None] = _spec_name
) -> Callable[[Handler], Handler]:
    """Run the handler inside the request context; its ServingError becomes the status.

    `model_of` names the model for the observer before anything is decoded,
    so a request that fails to decode is still counted against its model.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async with self.service.observe(api, PROTOCOL, model_of(request)):
                    return await handler(self, request, context)
            except ServingError as exc:
                await context.abort(exc.code, status_message(exc.message))

        return call

    return wrap


class ActiveCalls:
    """gRPC calls our handlers hold, from their first byte (before the request
    is parsed and counted by the observer) to their last, so the drain waits
    for every call the server accepted rather than cutting it short."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        if self.count == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._idle = None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self,
        service: InferenceService,
        *,
        tensor_content: bool = False,
        max_tensor_elements: int = codec.DEFAULT_MAX_ELEMENTS,
    ) -> None:
        self.service = service
        self._tensor_content = tensor_content
        self._max_elements = max_tensor_elements

    @rpc("predict")
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """Answers the serialized response: large outputs are written straight
        to the wire format (codec.predict_response_bytes)."""
        ref = codec.model_ref(request)
        limit = self._max_elements
        # Small work stays here (below OFFLOAD_BYTES the hand-off costs more);
        # written out rather than behind a helper: this runs on every request.
        if codec.request_size(request.inputs) > OFFLOAD_BYTES:
            inputs = await asyncio.to_thread(codec.request_inputs, request.inputs, limit)
        else:
            inputs = codec.request_inputs(request.inputs, limit)
        result = await self.service.predict(ref, inputs, request.output_filter)
        del inputs
        outputs = result.outputs
        codec.check_output_sizes(outputs, limit)
        response = predict_pb2.PredictResponse()
        fill_spec(response.model_spec, result.name, result.version, result.signature_name)
        del result
        raw = self._tensor_content
        if sum(array.nbytes for array in outputs.values()) > OFFLOAD_BYTES:
            return await asyncio.to_thread(codec.predict_response_bytes, response, outputs, raw)
        return codec.predict_response_bytes(response, outputs, raw)

    @rpc("classify")
    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        ref = codec.model_ref(request)
        result = await self.service.classify(ref, codec.serialized_examples(request.input))
        response = classification_pb2.ClassificationResponse()
        fill_spec(response.model_spec, result.name, result.version, result.signature_name)
        codec.classification_result(result, response.result)
        return response

    @rpc("regress")
    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        ref = codec.model_ref(request)
        result = await self.service.regress(ref, codec.serialized_examples(request.input))
        response = regression_pb2.RegressionResponse()
        fill_spec(response.model_spec, result.name, result.version, result.signature_name)
        codec.regression_result(result, response.result)
        return response

    @rpc("multi_inference", _first_task_name)
    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise invalid_argument("ModelSpec has no name specified.")
        tasks = []
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            tasks.append(InferenceTask(codec.spec_to_ref(task.model_spec), task.method_name))
        results = await self.service.multi_inference(
            tasks, codec.serialized_examples(request.input)
        )
        response = inference_pb2.MultiInferenceResponse()
        for result in results:
            codec.inference_result(result, response.results.add())
        return response

    @rpc("get_model_metadata")
    async def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        ref = codec.model_ref(request)
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise invalid_argument(f"Metadata field {field} is not supported")
        result = self.service.metadata(ref)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        fill_spec(response.model_spec, result.name, result.version, None)
        response.metadata[SIGNATURE_DEF].Pack(signature_def_map(result.signature_defs))
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @rpc("get_model_status")
    async def GetModelStatus(
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return status_response(self.service.status(codec.model_ref(request)))

    @rpc("reload_config", _no_model)
    async def HandleReloadConfigRequest(
        self,
        request: model_management_pb2.ReloadConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> model_management_pb2.ReloadConfigResponse:
        await self.service.reload(request.config)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response


# service → method → request message type
_METHODS: dict[str, dict[str, type[Message]]] = {
    "tensorflow.serving.PredictionService": {
        "Predict": predict_pb2.PredictRequest,
        "Classify": classification_pb2.ClassificationRequest,
        "Regress": regression_pb2.RegressionRequest,
        "MultiInference": inference_pb2.MultiInferenceRequest,
        "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest,
    },
    "tensorflow.serving.ModelService": {
        "GetModelStatus": get_model_status_pb2.GetModelStatusRequest,
        "HandleReloadConfigRequest": model_management_pb2.ReloadConfigRequest,
    },
}


def _response_size(response: Message) -> int:
    """Serialize on the loop: the responses left to protobuf here are small
    (Predict writes its own bytes; V2 passes its own estimate)."""
    return 0


def parse_request(kind: type[Message], data: bytes) -> Message | None:
    """The request, or None if the bytes are not one (the caller answers INTERNAL)."""
    try:
        return kind.FromString(data)
    except DecodeError:
        return None


def _raw_method(
    method: Handler,
    kind: type[Message],
    active: ActiveCalls | None = None,
    response_size: Callable[[Message], int] = _response_size,
) -> Callable[[Any, bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    """A unary handler taking and returning bytes around `method`."""
    full_name = kind.DESCRIPTOR.full_name
    calls = active if active is not None else ActiveCalls()

    async def call(self: Any, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        calls.enter()
        try:
            size = len(data)
            if size > OFFLOAD_BYTES:
                request = await asyncio.to_thread(parse_request, kind, data)
            else:
                request = parse_request(kind, data)
            del data
            if request is None:
                # gRPC's C++ servers answer INTERNAL for a request they cannot parse.
                log.debug("gRPC %s: %d bytes do not parse", full_name, size)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"Failed to parse {full_name} ({size} bytes)"
                )
            response = await method(self, request, context)
            del request
            if response is None:  # aborted
                return b""
            if isinstance(response, bytes):  # serialized by the handler itself
                return response
            if response_size(response) > OFFLOAD_BYTES:
                return await asyncio.to_thread(response.SerializeToString)
            return response.SerializeToString()
        finally:
            calls.leave()

    return call


def add_raw_service(
    server: grpc.aio.Server,
    service: str,
    servicer: Any,
    methods: Mapping[str, type[Message]],
    active: ActiveCalls | None = None,
    response_size: Callable[[Message], int] = _response_size,
) -> None:
    """Serve `methods` (name → request type) of `servicer` as `service`, each
    through `_raw_method`: parsed and serialized by us, counted in `active`.
    A method not listed gets gRPC's own UNIMPLEMENTED."""
    handlers = {}
    for name, kind in methods.items():
        method = getattr(type(servicer), name)
        behavior = functools.partial(_raw_method(method, kind, active, response_size), servicer)
        # No (de)serializers: the handler gets and returns the raw bytes.
        handlers[name] = grpc.unary_unary_rpc_method_handler(behavior)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def add_services(
    server: grpc.aio.Server,
    prediction: PredictionServicer,
    model: ModelServicer,
    active: ActiveCalls | None = None,
) -> None:
    for servicer, service in (
        (prediction, "tensorflow.serving.PredictionService"),
        (model, "tensorflow.serving.ModelService"),
    ):
        add_raw_service(server, service, servicer, _METHODS[service], active)
