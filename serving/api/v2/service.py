"""The V2 operations both V2 transports share, on top of the one InferenceService.

V2 addresses a model as name + optional version string. A version that is all
digits is TF Serving's version number; any other string is a version label
(`stable`, `canary`), resolved by the manager as TF Serving's labels are. A
model's V2 inputs and outputs are those of its serving signature
(`serving_default`), or of the signature named by the request's
`signature_name` parameter; inference is TF Serving's Predict on it, so
batching, metrics and limits are the same as for `/v1/...:predict`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from serving.api.v2 import codec
from serving.errors import ServingError, invalid_argument
from serving.inference.context import RequestContext
from serving.inference.model_ref import ModelRef
from serving.inference.service import InferenceService, PredictResult
from serving.repository import ModelRepository, RepositoryEntry
from serving.servables.signature import Signature

log = logging.getLogger("serving.v2")

SERVER_NAME = "model-server"
EXTENSIONS = ("binary_tensor_data", "model_repository")
PLATFORM = "tensorflow_savedmodel"
_INT64_MAX = (1 << 63) - 1


def model_ref(name: str, version: str = "", signature_name: str = "") -> ModelRef:
    if not name:
        raise invalid_argument("Missing model name in request.")
    if not version:
        return ModelRef(name, None, None, signature_name)
    if version.isdigit():
        number = int(version)
        if number > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        return ModelRef(name, number, None, signature_name)
    return ModelRef(name, None, version, signature_name)


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class V2Service:
    """V2's health, metadata, inference and repository calls, protocol-free.

    `ready()` is the server's readiness (the same rule as gRPC health and
    /v1/health/ready). Every request runs in the InferenceService's request
    context, as TF Serving's APIs do.
    """

    def __init__(
        self,
        service: InferenceService,
        *,
        ready: Callable[[], bool],
        repository: ModelRepository | None = None,
        version: str = "",
    ) -> None:
        self.service = service
        self.manager = service.manager
        self._ready = ready
        self.repository = repository
        self.version = version

    # ------------------------------------------------------------ accounting

    def observe(
        self, api: str, protocol: str, model: str | None, timeout_s: float | None = None
    ) -> RequestContext:
        """The one request context (metrics, drain, time limit, canonical codes)."""
        return self.service.observe(api, protocol, model, timeout_s)

    # ---------------------------------------------------------------- health

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            ref = model_ref(name, version)
            with self.manager.acquire(ref.servable_request):
                return True
        except ServingError:
            return False

    # -------------------------------------------------------------- metadata

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        ref = model_ref(name, version)
        with self.manager.acquire(ref.servable_request) as servable:
            signature = servable.signatures.get(servable.default_signature)
            versions = [str(v) for v in self.manager.available_versions(name)]
            if version:
                versions = [str(servable.version)]
            inputs, outputs = _tensors(signature)
        return ModelMetadata(name, versions, PLATFORM, inputs, outputs)

    # ------------------------------------------------------------- inference

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        parameters: Mapping[str, Any],
    ) -> PredictResult:
        signature_name = parameters.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument("parameter signature_name must be a string")
        ref = model_ref(name, version, signature_name)
        return await self.service.predict(ref, inputs, outputs)

    # ------------------------------------------------------------ repository

    def _repo(self) -> ModelRepository:
        if self.repository is None:
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED, "the model repository extension is not enabled"
            )
        return self.repository

    async def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        return await asyncio.to_thread(self._repo().index, ready_only)

    async def repository_load(self, name: str, base_path: str | None = None) -> None:
        if not name:
            raise invalid_argument("Missing model name in request.")
        await asyncio.to_thread(self._repo().load, name, base_path)

    async def repository_unload(self, name: str) -> None:
        if not name:
            raise invalid_argument("Missing model name in request.")
        await asyncio.to_thread(self._repo().unload, name)


def _tensors(signature: Signature | None) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
    if signature is None:
        return [], []

    def describe(specs: Mapping[str, Any]) -> list[TensorMetadata]:
        return [
            TensorMetadata(alias, codec.tf_datatype(spec.dtype), codec.metadata_shape(spec.shape))
            for alias, spec in specs.items()
        ]

    return describe(signature.inputs), describe(signature.outputs)
