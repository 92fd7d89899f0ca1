"""Choosing and checking the signature a request runs."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from serving.errors import failed_precondition, invalid_argument
from serving.servables.base import Servable
from serving.servables.signature import (
    Signature,
    TensorSpec,
    numpy_type_name,
    short_dtype_name,
)


def select_signature(servable: Servable, signature_name: str) -> Signature:
    """Predict's lookup: an unknown key is FAILED_PRECONDITION, as in TF Serving."""
    key, signature = _lookup(servable, signature_name)
    if signature is None:
        raise failed_precondition(f'Serving signature key "{key}" not found.')
    return signature


def select_example_signature(servable: Servable, signature_name: str) -> Signature:
    """Classify/Regress lookup: TF Serving answers INVALID_ARGUMENT here."""
    key, signature = _lookup(servable, signature_name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {key}")
    return signature


def signature_inputs(servable: Servable, signature_name: str) -> Mapping[str, TensorSpec]:
    """The input specs a typeless request (JSON) is decoded against.

    TF Serving's REST API looks these up (GetInfoMap) before it parses the
    tensors, with its own INVALID_ARGUMENT wording, so its lookup errors
    come before any error in the body's tensors.
    """
    key, signature = _lookup(servable, signature_name)
    if signature is None:
        raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
    if not signature.inputs:
        raise invalid_argument(
            f"Failed to get input map for signature: {signature_name or 'DEFAULT'}"
        )
    return signature.inputs


def _lookup(servable: Servable, signature_name: str) -> tuple[str, Signature | None]:
    key = signature_name or servable.default_signature
    return key, servable.signatures.get(key)


def _set(names: Collection[str]) -> str:
    return ",".join(sorted(names))


def check_inputs(
    model_name: str, signature: Signature, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Validate names, dtypes and shapes; return inputs cast where lossless."""
    if len(inputs) != len(signature.inputs):
        sent, wanted = set(inputs), set(signature.inputs)
        raise invalid_argument(
            f"input size does not match signature: {len(inputs)}!={len(wanted)} "
            f"len({{{_set(sent)}}}) != len({{{_set(wanted)}}}). "
            f"Sent extra: {{{_set(sent - wanted)}}}. "
            f"Missing but required: {{{_set(wanted - sent)}}}."
        )
    for alias in inputs:
        if alias not in signature.inputs:
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{_set(signature.inputs)}}}."
            )
    checked: dict[str, np.ndarray] = {}
    for alias, spec in signature.inputs.items():
        checked[alias] = _check_input(spec, inputs[alias])
    return checked


def _check_input(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    expected = spec.np_dtype
    if array.dtype != expected:
        raise invalid_argument(
            f"Expected input {spec.alias} to be {short_dtype_name(spec.dtype)} "
            f"but get {numpy_type_name(array)}."
        )
    # No shape check here: TF Serving's Session::Run checks no fed shape (its
    # own clients send [1] to a [-1, 1] input, its REST tests send [n, 2]
    # there, its TF2 test model declares [1] yet serves [n, 1]). When the
    # graph itself cannot use a shape, the error names every input
    # (describe_inputs).
    return array


def check_output_filter(signature: Signature, output_filter: Collection[str]) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{_set(signature.outputs)}}}."
            )
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


def describe_inputs(inputs: Mapping[str, np.ndarray]) -> str:
    """`x: float [3,1]`, for errors the graph raises about shapes."""
    return ", ".join(
        f"{alias}: {numpy_type_name(a)} [{','.join(str(d) for d in a.shape)}]"
        for alias, a in inputs.items()
    )
