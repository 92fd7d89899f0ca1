"""The one request path every protocol calls: TF Serving's APIs on numpy arrays.

Protocol adapters (gRPC, REST, any later one) decode their wire format into
the arguments below, run the call inside `observe(...)` (metrics, time limit,
canonical error codes: serving.inference.context) and encode the result.
Nothing here knows a wire format: inputs are numpy arrays, examples are
serialized tf.Example bytes, results are plain dataclasses, and failures are
ServingErrors with a canonical code each protocol maps to its own status.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import grpc
import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import GraphError, invalid_argument, unimplemented
from serving.inference import examples as ex
from serving.inference.context import Observer, RequestContext
from serving.inference.model_ref import ModelRef
from serving.inference.runner import Runner
from serving.inference.signatures import (
    check_inputs,
    check_output_filter,
    describe_inputs,
    select_example_signature,
    select_signature,
    signature_inputs,
)
from serving.manager.manager import ServableManager
from serving.manager.state import VersionStatus
from serving.servables.signature import CLASSIFY_METHOD, REGRESS_METHOD, Signature, TensorSpec

if TYPE_CHECKING:
    from tensorflow_serving.config import model_server_config_pb2

# Decodes a request's inputs against its signature's input specs, for wire
# formats that carry no types of their own (TF Serving's JSON).
# A decoder may return an awaitable: large inputs are converted off the event loop.
InputDecoder = Callable[
    [Mapping[str, TensorSpec]],
    Mapping[str, np.ndarray] | Awaitable[Mapping[str, np.ndarray]],
]
ReloadConfig = Callable[["model_server_config_pb2.ModelServerConfig"], Awaitable[None]]


class PredictResult(NamedTuple):  # per request: cheaper than a frozen dataclass
    name: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]
    # The signature's output specs, so adapters can shape responses.
    signature: Signature


@dataclass(frozen=True)
class ClassifyResult:
    name: str
    version: int
    signature_name: str
    classes: np.ndarray | None  # [batch, num_classes] of bytes
    scores: np.ndarray | None  # [batch, num_classes] float32


@dataclass(frozen=True)
class RegressResult:
    name: str
    version: int
    signature_name: str
    values: np.ndarray  # [batch] float32


@dataclass(frozen=True)
class MetadataResult:
    name: str
    version: int
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]


@dataclass(frozen=True)
class InferenceTask:
    ref: ModelRef
    method_name: str


class InferenceService:
    """Predict, Classify, Regress, MultiInference, metadata, status and reload."""

    def __init__(
        self,
        manager: ServableManager,
        runner: Runner,
        *,
        observer: Observer | None = None,
        reload_config: ReloadConfig | None = None,
        method_name_check: bool = False,
    ) -> None:
        self.manager = manager
        self.runner = runner
        self.observer = observer
        self._reload_config = reload_config
        self._method_check = method_name_check

    def observe(
        self, api: str, protocol: str, model: str | None, timeout_s: float | None = None
    ) -> RequestContext:
        """The context every request runs in (`async with`), whatever its protocol.

        `api` is the metrics' name for the call ("predict", "get_model_status",
        ...), `model` the name the request gave (checked against the config
        before it becomes a label), `timeout_s` the request's time limit.
        """
        return RequestContext(self.observer, api, protocol, model, timeout_s)

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray] | InputDecoder,
        output_filter: Sequence[str] = (),
    ) -> PredictResult:
        """Run one signature. `inputs` may be a decoder that needs the signature's
        input specs first; it runs under the same servable handle, after TF
        Serving's lookup for it (`signature_inputs`)."""
        with self.manager.acquire(ref.servable_request) as servable:
            if callable(inputs):
                decoded = inputs(signature_inputs(servable, ref.signature_name))
                inputs = await decoded if inspect.isawaitable(decoded) else decoded
            signature = select_signature(servable, ref.signature_name)
            checked = check_inputs(ref.name, signature, inputs)
            wanted = check_output_filter(signature, output_filter)
            try:
                outputs = await self.runner.run(servable, signature, checked, wanted)
            except GraphError as exc:
                if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                # The graph rejected the inputs (a shape it cannot use): say which.
                raise invalid_argument(
                    f"{exc.message} (request inputs: {describe_inputs(checked)})"
                ) from None
            return PredictResult(ref.name, servable.version, signature.key, outputs, signature)

    async def classify(self, ref: ModelRef, examples: np.ndarray) -> ClassifyResult:
        with self.manager.acquire(ref.servable_request) as servable:
            signature = select_example_signature(servable, ref.signature_name)
            plan = ex.plan_classify(signature, self._method_check)
            out = await self.runner.run(
                servable, signature, {plan.input_alias: examples}, plan.outputs
            )
            classes, scores = ex.classification_arrays(
                len(examples), out.get(ex.CLASSES), out.get(ex.SCORES)
            )
            return ClassifyResult(ref.name, servable.version, signature.key, classes, scores)

    async def regress(self, ref: ModelRef, examples: np.ndarray) -> RegressResult:
        with self.manager.acquire(ref.servable_request) as servable:
            signature = select_example_signature(servable, ref.signature_name)
            alias = ex.plan_regress(signature, self._method_check)
            out = await self.runner.run(
                servable, signature, {alias: examples}, [ex.REGRESS_OUTPUTS]
            )
            values = ex.regression_array(len(examples), out[ex.REGRESS_OUTPUTS])
            return RegressResult(ref.name, servable.version, signature.key, values)

    async def multi_inference(
        self, tasks: Sequence[InferenceTask], examples: np.ndarray
    ) -> list[ClassifyResult | RegressResult]:
        """Several classify/regress signatures over the same examples, in one run."""
        if not tasks:
            raise invalid_argument("Expected at least one task")
        first = tasks[0].ref
        for task in tasks:
            if task.ref.name != first.name:
                raise invalid_argument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
        with self.manager.acquire(first.servable_request) as servable:
            chosen: list[tuple[InferenceTask, Signature]] = []
            seen: set[str] = set()
            for task in tasks:
                key = task.ref.signature_name or servable.default_signature
                if key in seen:
                    raise invalid_argument(f"Duplicate evaluation of signature: {key}")
                seen.add(key)
                signature = servable.signatures.get(key)
                if signature is None:
                    raise invalid_argument(f"Requested signature not found in model graph: {key}")
                chosen.append((task, signature))
            combined, routes = self._combine(chosen)
            # Every task's input tensor gets the same serialized examples.
            feed = dict.fromkeys(combined.inputs, examples)
            out = await self.runner.run(servable, combined, feed, list(combined.outputs))
            results: list[ClassifyResult | RegressResult] = []
            for (task, signature), route in zip(chosen, routes, strict=True):
                if task.method_name == CLASSIFY_METHOD:
                    classes, scores = ex.classification_arrays(
                        len(examples),
                        out.get(route.get(ex.CLASSES, "")),
                        out.get(route.get(ex.SCORES, "")),
                    )
                    results.append(
                        ClassifyResult(first.name, servable.version, signature.key, classes, scores)
                    )
                else:
                    values = ex.regression_array(len(examples), out[route[ex.REGRESS_OUTPUTS]])
                    results.append(
                        RegressResult(first.name, servable.version, signature.key, values)
                    )
            return results

    def _combine(
        self, chosen: Sequence[tuple[InferenceTask, Signature]]
    ) -> tuple[Signature, list[dict[str, str]]]:
        """One signature holding every task's inputs and outputs, so one run serves all.

        TF2 exports give each signature its own input placeholder: like TF
        Serving, the distinct input tensors are all fed (with the same
        examples) rather than requiring one shared input.
        """
        inputs: dict[str, TensorSpec] = {}  # tensor name → spec
        outputs = {}
        routes: list[dict[str, str]] = []
        for index, (task, signature) in enumerate(chosen):
            if task.method_name == CLASSIFY_METHOD:
                wanted = ex.plan_classify(signature, self._method_check).outputs
            elif task.method_name == REGRESS_METHOD:
                ex.plan_regress(signature, self._method_check)
                wanted = [ex.REGRESS_OUTPUTS]
            else:
                raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
            spec = next(iter(signature.inputs.values()))
            inputs.setdefault(spec.tensor_name, spec)
            route = {}
            for alias in wanted:
                key = f"{index}/{alias}"
                outputs[key] = signature.outputs[alias]
                route[alias] = key
            routes.append(route)
        key = "\x00multi:" + ",".join(sig.key for _t, sig in chosen)
        aliased = {f"inputs{i}": spec for i, spec in enumerate(inputs.values())}
        combined = Signature(key, "", aliased, outputs)
        return combined, routes

    def metadata(self, ref: ModelRef) -> MetadataResult:
        with self.manager.acquire(ref.servable_request) as servable:
            return MetadataResult(ref.name, servable.version, servable.signature_defs)

    def status(self, ref: ModelRef) -> list[VersionStatus]:
        # Like TF Serving, a version label is ignored here: all versions are listed.
        return self.manager.status(ref.name, ref.version)

    async def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Apply a new model config list (ModelService.HandleReloadConfigRequest)."""
        if config.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        if self._reload_config is None:
            raise unimplemented("This server does not reload its model config")
        await self._reload_config(config)
