"""TF Serving's status and metadata messages, built in one place for both protocols.

gRPC sends these protos as they are; REST prints the same protos as TF
Serving's JSON, so the two can never disagree on what a model reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.manager.state import VersionStatus

SIGNATURE_DEF = "signature_def"  # the one metadata field TF Serving serves


def fill_spec(spec: model_pb2.ModelSpec, name: str, version: int, signature: str | None) -> None:
    spec.name = name
    spec.version.value = version
    if signature is not None:
        spec.signature_name = signature


def model_spec(name: str, version: int, signature: str | None = None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec()
    fill_spec(spec, name, version, signature)
    return spec


def status_response(
    statuses: Iterable[VersionStatus],
) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatus's answer: one ModelVersionStatus per version, newest first."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        out = response.model_version_status.add()
        out.version = status.version
        out.state = int(status.state)
        out.status.error_code = status.error_code
        out.status.error_message = status.error
    return response


def signature_def_map(
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
) -> get_model_metadata_pb2.SignatureDefMap:
    """GetModelMetadata's `signature_def` field, as a message of its own."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    return signature_map
