"""Model warmup: replay `assets.extra/tf_serving_warmup_requests` at load time.

As TF Serving: the file is a TFRecord of PredictionLog protos (predict,
classify, regress or multi_inference requests); each is run
`--num_request_iterations_for_warmup` times before the version is marked
AVAILABLE, so the first real request does not pay for lazy initialisation.
A failing warmup request fails the load.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import input_pb2, prediction_log_pb2

from serving.errors import LoadError, ServingError, invalid_argument
from serving.servables.base import Servable
from serving.servables.signature import Signature

log = logging.getLogger(__name__)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving's limit


def warmup(servable: Servable, iterations: int) -> int:
    """Run the version's warmup requests; returns how many records ran."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.isfile(path) or iterations <= 0:
        return 0
    started = time.monotonic()
    count = 0
    try:
        for record in tf.compat.v1.io.tf_record_iterator(path):
            count += 1
            if count > MAX_RECORDS:
                raise LoadError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS})")
            entry = prediction_log_pb2.PredictionLog.FromString(record)
            for _ in range(iterations):
                _replay(servable, entry)
    except ServingError as exc:
        raise LoadError(f"Failed to run warmup request {count}: {exc.message}", 3) from exc
    except tf.errors.OpError as exc:
        raise LoadError(f"Failed to read warmup requests {path}: {exc.message}", 3) from exc
    log.info(
        "%s version %d: ran %d warmup request(s) x%d in %.3fs",
        servable.name,
        servable.version,
        count,
        iterations,
        time.monotonic() - started,
    )
    return count


def _signature(servable: Servable, name: str) -> Signature:
    key = name or servable.default_signature
    if key not in servable.signatures:
        raise LoadError(f'Warmup request names unknown signature "{key}"', 3)
    return servable.signatures[key]


def _replay(servable: Servable, entry: prediction_log_pb2.PredictionLog) -> None:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        signature = _signature(servable, request.model_spec.signature_name)
        inputs = {alias: _tensor(alias, t) for alias, t in request.inputs.items()}
        outputs = list(request.output_filter) or list(signature.outputs)
        servable.run(signature, inputs, outputs)
    elif kind in ("classify_log", "regress_log"):
        request = getattr(entry, kind).request
        signature = _signature(servable, request.model_spec.signature_name)
        alias = next(iter(signature.inputs))
        servable.run(
            signature, {alias: serialized_examples(request.input)}, list(signature.outputs)
        )
    elif kind == "multi_inference_log":
        request = entry.multi_inference_log.request
        examples = serialized_examples(request.input)
        for task in request.tasks:
            signature = _signature(servable, task.model_spec.signature_name)
            alias = next(iter(signature.inputs))
            servable.run(signature, {alias: examples}, list(signature.outputs))
    else:
        raise LoadError(f"Unsupported log_type for warmup: {kind}", 12)


def _tensor(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """TensorFlow's own TensorProto decoding: warmup records come from TF tooling."""
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"tensor parsing error: {alias} ({exc})") from None


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """A request's tf.Examples as serialized bytes (context bytes first, as TF Serving merges)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        records = [context + e.SerializeToString() for e in with_context.examples]
    else:
        records = [e.SerializeToString() for e in request_input.example_list.examples]
    if not records:
        raise invalid_argument("Input is empty.")
    out = np.empty(len(records), dtype=object)
    out[:] = records
    return out
