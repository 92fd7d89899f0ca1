"""Classify and Regress: TF Serving's signature rules for serialized tf.Example inputs.

Examples arrive here already serialized (a 1-D object array of bytes): each
protocol turns its own form of them (protos, JSON) into that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2

from serving.errors import invalid_argument
from serving.servables.signature import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    Signature,
    TensorSpec,
    dtype_name,
)

CLASSES = "classes"
SCORES = "scores"
REGRESS_OUTPUTS = "outputs"
INPUTS = "inputs"


def _only_input(signature: Signature, what: str) -> TensorSpec:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    spec = signature.inputs.get(INPUTS)
    if spec is None:
        raise invalid_argument(f"No {what} inputs found in SignatureDef: {signature.key}")
    if spec.dtype != types_pb2.DT_STRING:
        raise invalid_argument(
            f"Expected input Tensor of DT_STRING (serialized tf.Examples). Got: "
            f"{dtype_name(spec.dtype)}"
        )
    return spec


def check_method(signature: Signature, expected: str, what: str, enabled: bool) -> None:
    if enabled and signature.method_name != expected:
        raise invalid_argument(
            f"Expected {what} signature method_name to be {expected}. Was: {signature.method_name}"
        )


@dataclass(frozen=True)
class ClassifyPlan:
    input_alias: str
    outputs: list[str]  # subset of ["classes", "scores"]


def plan_classify(signature: Signature, method_check: bool) -> ClassifyPlan:
    check_method(signature, CLASSIFY_METHOD, "classification", method_check)
    spec = _only_input(signature, "classification")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    outputs = [k for k in (CLASSES, SCORES) if k in signature.outputs]
    if not outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {signature.key}'
        )
    return ClassifyPlan(spec.alias, outputs)


def plan_regress(signature: Signature, method_check: bool) -> str:
    check_method(signature, REGRESS_METHOD, "regression", method_check)
    spec = _only_input(signature, "regression")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {signature.key}")
    return spec.alias


def classification_arrays(
    batch: int, classes: np.ndarray | None, scores: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Check the signature's outputs as TF Serving's classifier does."""
    for name, array, want, wanted in (
        (CLASSES, classes, np.object_, "DT_STRING"),
        (SCORES, scores, np.float32, "DT_FLOAT"),
    ):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid_argument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array)}"
            )
        if array.dtype != want:
            raise invalid_argument(f"Expected {name} Tensor of {wanted}. Got: {array.dtype}")
        if array.shape[0] != batch:
            raise invalid_argument(
                f"Expected {name} output batch size of {batch}. Got: {array.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    return classes, scores


def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def regression_array(batch: int, outputs: np.ndarray) -> np.ndarray:
    if not (outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            f"but got {_shape(outputs)}"
        )
    if outputs.shape[0] != batch:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {batch} vs. {outputs.shape[0]}"
        )
    if outputs.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {outputs.dtype}")
    return outputs.reshape(-1)
