"""PredictionService and ModelService over grpc.aio, as thin adapters."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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

from serving.api.grpc import convert
from serving.errors import ServingError, invalid_argument
from serving.inference.examples import serialized_examples
from serving.inference.service import InferenceService, InferenceTask
from serving.inference.tensors import from_ndarray, to_ndarray, to_tensor_content

log = logging.getLogger(__name__)

_MAX_MESSAGE = 1024  # TF Serving truncates longer status messages
SIGNATURE_DEF = "signature_def"

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def status_message(message: str) -> str:
    if len(message) > _MAX_MESSAGE:
        return message[:_MAX_MESSAGE] + "...TRUNCATED"
    return message


def rpc(api: str) -> Callable[[Handler], Handler]:
    """Turn ServingError into the gRPC status; anything else into INTERNAL.

    Also reports each call to the observer (serving.observability: metrics,
    in-flight tracking for the drain): `observer.start(api, "grpc", request)`
    before, `observer.finish(token, code)` after, whatever the outcome.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def call(self, request, context: grpc.aio.ServicerContext):
            observer = self.observer
            token = None
            code = grpc.StatusCode.OK
            try:
                if observer:
                    token = observer.start(api, "grpc", request)
                return await handler(self, request, context)
            except ServingError as exc:
                code = exc.code
                await context.abort(exc.code, status_message(exc.message))
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:  # the client went away or the deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", api)
                await context.abort(code, status_message(f"{type(exc).__name__}: {exc}"))
            finally:
                if token is not None:
                    observer.finish(token, code)

        return call

    return wrap


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self,
        service: InferenceService,
        *,
        tensor_content: bool = False,
        observer: Any = None,
    ) -> None:
        self.service = service
        self.observer = observer
        self._tensor_content = tensor_content

    @rpc("predict")
    async def Predict(self, request: predict_pb2.PredictRequest, context):
        ref = convert.model_ref(request)
        inputs = {}
        for alias, proto in request.inputs.items():
            try:
                inputs[alias] = to_ndarray(proto, alias)
            except ServingError:
                raise
            except Exception as exc:
                raise invalid_argument(f"tensor parsing error: {alias} ({exc})") from None
        result = await self.service.predict(ref, inputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        convert.fill_spec(response.model_spec, result.name, result.version, result.signature_name)
        for alias, array in result.outputs.items():
            out = response.outputs[alias]
            if self._tensor_content and array.dtype != object:
                to_tensor_content(array, out)
            else:
                from_ndarray(array, out=out)
        return response

    @rpc("classify")
    async def Classify(self, request: classification_pb2.ClassificationRequest, context):
        ref = convert.model_ref(request)
        result = await self.service.classify(ref, serialized_examples(request.input))
        response = classification_pb2.ClassificationResponse()
        convert.fill_spec(response.model_spec, result.name, result.version, result.signature_name)
        convert.classification_result(result, response.result)
        return response

    @rpc("regress")
    async def Regress(self, request: regression_pb2.RegressionRequest, context):
        ref = convert.model_ref(request)
        result = await self.service.regress(ref, serialized_examples(request.input))
        response = regression_pb2.RegressionResponse()
        convert.fill_spec(response.model_spec, result.name, result.version, result.signature_name)
        convert.regression_result(result, response.result)
        return response

    @rpc("multi_inference")
    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context):
        if not request.tasks:
            raise invalid_argument("ModelSpec has no name specified.")
        tasks = []
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            tasks.append(InferenceTask(convert.spec_to_ref(task.model_spec), task.method_name))
        results = await self.service.multi_inference(tasks, serialized_examples(request.input))
        response = inference_pb2.MultiInferenceResponse()
        for result in results:
            convert.inference_result(result, response.results.add())
        return response

    @rpc("get_model_metadata")
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
    ):
        ref = convert.model_ref(request)
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise invalid_argument(f"Metadata field {field} is not supported")
        result = self.service.metadata(ref)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        convert.fill_spec(response.model_spec, result.name, result.version, None)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in result.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        service: InferenceService,
        reload_config: Callable[[Any], Awaitable[None]],
        *,
        observer: Any = None,
    ) -> None:
        self.service = service
        self.observer = observer
        self._reload_config = reload_config

    @rpc("get_model_status")
    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        ref = convert.model_ref(request)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.service.status(ref):
            convert.version_status(status, response.model_version_status.add())
        return response

    @rpc("reload_config")
    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context
    ):
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        await self._reload_config(request.config)
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
