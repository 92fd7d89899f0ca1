"""Merging requests into one batch and splitting the answer back (NumPy only).

These run on batch threads, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from serving.errors import ServingError, invalid_argument

# TF Serving's wording (batching_session.cc SplitOutputTensors).
ZERO_DIM_OUTPUT = "Batched output tensor has 0 dimensions"
OUTPUT_SIZE_MISMATCH = (
    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
    "sizes of the input tensors"
)


def merge_inputs(
    parts: Sequence[Mapping[str, np.ndarray]], rows: int, padded_rows: int, pad_variable: bool
) -> dict[str, np.ndarray]:
    """Concatenate each input along dim 0; pad to `padded_rows` with copies of a real row.

    Padding rows repeat the first row of the last request, as TF Serving does,
    so they are always valid model inputs.
    """
    if len(parts) == 1 and padded_rows == rows:
        return dict(parts[0])
    merged: dict[str, np.ndarray] = {}
    for alias in parts[0]:
        arrays = [p[alias] for p in parts]
        if pad_variable:
            arrays = pad_to_common_shape(arrays)
        if padded_rows > rows:
            arrays.append(np.repeat(arrays[-1][:1], padded_rows - rows, axis=0))
        merged[alias] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return merged


def pad_to_common_shape(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """pad_variable_length_inputs: grow every non-batch dimension to the batch's largest.

    The pad value is each tensor's own first element (TF Serving's choice).
    """
    dims = arrays[0].ndim
    biggest = [max(a.shape[d] for a in arrays) for d in range(1, dims)]
    out = []
    for array in arrays:
        grow = [b - s for b, s in zip(biggest, array.shape[1:], strict=True)]
        if not any(grow):
            out.append(array)
            continue
        if array.size == 0:
            raise invalid_argument("Got empty tensor in batch of non-empty tensors.")
        widths = [(0, 0)] + [(0, g) for g in grow]
        out.append(np.pad(array, widths, mode="constant", constant_values=array.flat[0]))
    return out


class OutputMismatch(ServingError):
    """The signature's outputs do not follow its inputs' dim 0: it cannot be batched."""


def split_outputs(
    outputs: Mapping[str, np.ndarray], sizes: Sequence[int], padded_rows: int
) -> list[dict[str, np.ndarray]]:
    """One dict of views per request; padding rows at the end are never handed out."""
    per_request: list[dict[str, np.ndarray]] = [{} for _ in sizes]
    for alias, value in outputs.items():
        if value.ndim == 0:
            raise OutputMismatch(grpc.StatusCode.FAILED_PRECONDITION, ZERO_DIM_OUTPUT)
        if value.shape[0] != padded_rows:
            raise OutputMismatch(grpc.StatusCode.FAILED_PRECONDITION, OUTPUT_SIZE_MISMATCH)
        start = 0
        for index, size in enumerate(sizes):
            per_request[index][alias] = value[start : start + size]
            start += size
    return per_request


def concat_pieces(pieces: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Reassemble a request that large-batch splitting ran in several batches."""
    return {alias: np.concatenate([p[alias] for p in pieces]) for alias in pieces[0]}
