"""A small real InferenceService for in-process tests: the real manager and
runner over a numpy version of half_plus_two (y = 0.5 x + 2), no model files.

Its signatures are half_plus_two's (serving_default on `x`, classify_x_to_y
and regress_x_to_y on serialized tf.Examples with a float feature `x`), so
the protocol adapters can be driven exactly as a client would drive them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.inference.runner import DirectRunner
from serving.inference.service import InferenceService
from serving.manager.manager import ServableManager
from serving.servables.base import Servable
from serving.servables.signature import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD, Signature

MODEL = "hp2"


def _info(name: str, dtype: int, dims: Sequence[int]) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=name, dtype=dtype)
    for size in dims:
        info.tensor_shape.dim.add().size = size
    return info


def _signature(inputs: dict, outputs: dict, method: str) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name=method)
    for alias, info in inputs.items():
        sig.inputs[alias].CopyFrom(info)
    for alias, info in outputs.items():
        sig.outputs[alias].CopyFrom(info)
    return sig


X = _info("x:0", types_pb2.DT_FLOAT, [-1, 1])
EXAMPLES = _info("tf_example:0", types_pb2.DT_STRING, [-1])
Y = _info("y:0", types_pb2.DT_FLOAT, [-1, 1])
Y_EXAMPLE = _info("y_example:0", types_pb2.DT_FLOAT, [-1, 1])
SIGNATURE_DEFS = {
    "serving_default": _signature({"x": X}, {"y": Y}, PREDICT_METHOD),
    "classify_x_to_y": _signature({"inputs": EXAMPLES}, {"scores": Y_EXAMPLE}, CLASSIFY_METHOD),
    "regress_x_to_y": _signature({"inputs": EXAMPLES}, {"outputs": Y_EXAMPLE}, REGRESS_METHOD),
}


def example(x: float) -> bytes:
    record = example_pb2.Example()
    record.features.feature["x"].float_list.value.append(x)
    return record.SerializeToString()


class NumpyHalfPlusTwo(Servable):
    """half_plus_two's graph in numpy, keyed by tensor name as the Session loader is."""

    def __init__(self, name: str, version: int, path: str) -> None:
        super().__init__(name, version, path, SIGNATURE_DEFS, "serving_default", "/CPU:0")

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        ((alias, array),) = inputs.items()
        if signature.inputs[alias].tensor_name == "x:0":
            x = np.asarray(array, np.float32)
        else:  # serialized tf.Examples
            values = [example_pb2.Example.FromString(r).features.feature["x"] for r in array]
            x = np.array([[v.float_list.value[0]] for v in values], np.float32)
        y = (0.5 * x + 2).astype(np.float32)
        return {a: y for a in output_aliases}

    def close(self) -> None:
        pass


@dataclass
class RecordingObserver:
    """Observer that keeps (api, protocol, model, code) per finished request."""

    finished: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    started: int = 0
    draining: bool = False

    def start(self, api: str, protocol: str, model: str | None) -> tuple[str, str, str | None]:
        if self.draining:
            from serving.errors import unavailable

            raise unavailable("Server is shutting down")
        self.started += 1
        return (api, protocol, model)

    def finish(self, token: tuple[str, str, str | None], code: grpc.StatusCode) -> None:
        self.finished.append((*token, code.name))


@contextlib.contextmanager
def small_service(
    observer: RecordingObserver | None = None, **kwargs: object
) -> Iterator[InferenceService]:
    """An InferenceService serving MODEL version 1 (loaded before it is yielded)."""
    manager = ServableManager(NumpyHalfPlusTwo, load_retry_interval_s=0.01)
    executor = ThreadPoolExecutor(2, thread_name_prefix="run")
    try:
        manager.set_aspired_versions(MODEL, {1: "/models/hp2/1"})
        assert manager.wait_until(lambda: manager.available_versions(MODEL) == [1], 10)
        yield InferenceService(manager, DirectRunner(executor), observer=observer, **kwargs)  # type: ignore[arg-type]
    finally:
        manager.shutdown(1.0)
        executor.shutdown(wait=False)
