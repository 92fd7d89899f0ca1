"""TF Serving's request/response protos ↔ the inference layer's types."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import Message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    regression_pb2,
)

from serving.errors import invalid_argument
from serving.inference.model_ref import ModelRef
from serving.inference.service import ClassifyResult, RegressResult
from serving.manager.state import VersionStatus


def model_ref(request: Message) -> ModelRef:
    """The request's model_spec, checked as TF Serving checks it."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    return spec_to_ref(request.model_spec)


def spec_to_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    return ModelRef(
        name=spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
        signature_name=spec.signature_name,
    )


def fill_spec(spec: model_pb2.ModelSpec, name: str, version: int, signature: str | None) -> None:
    spec.name = name
    spec.version.value = version
    if signature is not None:
        spec.signature_name = signature


def classification_result(
    result: ClassifyResult, out: classification_pb2.ClassificationResult
) -> None:
    classes, scores = result.classes, result.scores
    reference = classes if classes is not None else scores
    assert reference is not None
    batch, num = reference.shape
    labels = classes.tolist() if classes is not None else None
    values = scores.tolist() if scores is not None else None
    for i in range(batch):
        row = out.classifications.add()
        for j in range(num):
            item = row.classes.add()
            if labels is not None:
                item.label = _text(labels[i][j])
            if values is not None:
                item.score = values[i][j]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def regression_result(result: RegressResult, out: regression_pb2.RegressionResult) -> None:
    for value in np.asarray(result.values).tolist():
        out.regressions.add().value = value


def inference_result(
    result: ClassifyResult | RegressResult, out: inference_pb2.InferenceResult
) -> None:
    fill_spec(out.model_spec, result.name, result.version, result.signature_name)
    if isinstance(result, ClassifyResult):
        classification_result(result, out.classification_result)
    else:
        regression_result(result, out.regression_result)


def version_status(status: VersionStatus, out: get_model_status_pb2.ModelVersionStatus) -> None:
    out.version = status.version
    out.state = int(status.state)
    out.status.error_code = status.error_code
    out.status.error_message = status.error
