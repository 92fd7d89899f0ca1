"""PredictionService and ModelService over grpc.aio, as thin adapters.

Each RPC decodes its request (serving.api.grpc.codec), calls the
InferenceService inside `service.observe(...)` (metrics, canonical error
codes) and encodes the result. The only gRPC-specific error handling left is
turning the canonical code into the call's status (`rpc`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
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

PROTOCOL = "grpc"
_MAX_MESSAGE = 1024  # TF Serving truncates longer status messages

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


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: InferenceService, *, tensor_content: bool = False) -> None:
        self.service = service
        self._tensor_content = tensor_content

    @rpc("predict")
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        ref = codec.model_ref(request)
        inputs = codec.request_inputs(request.inputs)
        result = await self.service.predict(ref, inputs, request.output_filter)
        response = predict_pb2.PredictResponse()
        fill_spec(response.model_spec, result.name, result.version, result.signature_name)
        outputs = response.outputs
        raw = self._tensor_content
        for alias, array in result.outputs.items():
            if raw and array.dtype != object:
                codec.to_tensor_content(array, outputs[alias])
            else:
                codec.from_ndarray(array, out=outputs[alias])
        return response

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


def add_services(
    server: grpc.aio.Server,
    prediction: PredictionServicer,
    model: ModelServicer,
) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, server)
