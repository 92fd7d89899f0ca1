"""TensorFlow Lite models (`model.tflite` in a version folder), run by LiteRT.

When TF Serving loads one (`--prefer_tflite_model` and the file present;
otherwise the folder is read as a SavedModel), and what we do alike:
- signatures come from the `signature_defs_metadata` entry TF Serving's
  tooling writes into the model; tensor names the converter stripped of
  their `:0` are matched without it;
- a model with none gets one `serving_default` signature (method predict)
  over the primary subgraph's inputs and outputs, each keyed by its tensor
  name without the `:N` suffix, with the tensor's current shape;
- each request resizes the input tensors to what it feeds (non-strict, so a
  `[1, 1]` model takes `[n, 1]` or `[n]`), so merged batches need nothing
  special;
- a pool of interpreters, one thread each, serves concurrent requests
  (`--num_tflite_pools` of them, default one per CPU; a caller waits for a
  free one); with `--num_tflite_interpreters_per_pool` above 1, a request
  with many rows is split into mini-batches (⌈500 / n⌉ rows, or the model's
  own fixed batch size) that run in parallel on the pool.

Beyond TF Serving: a model without that metadata but with the SignatureDef
table modern converters write (what LiteRT's signature runner uses) is served
with those signatures, names and dynamic (`-1`) dimensions as the converter
recorded them. TF Serving would fall back to tensor names there, where
several outputs of one op (`PartitionedCall:0`, `PartitionedCall:1`) collide.

LiteRT (`ai-edge-litert`) runs the models; TensorFlow's own deprecated
`tf.lite.Interpreter` is the fallback when LiteRT is not installed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import GraphError, LoadError, ServingError
from serving.servables.base import DEFAULT_SERVING_SIGNATURE, Servable
from serving.servables.signature import PREDICT_METHOD, Signature


@functools.cache
def runtime() -> tuple[Any, Any, str]:
    """(Interpreter class, TFLite schema module, runtime name), imported on first use.

    Servers that load no TFLite model never load LiteRT's libraries.
    """
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, schema, "LiteRT"
    except ImportError:  # pragma: no cover - LiteRT is a dependency; this is the fallback
        from tensorflow.lite.python import schema_py_generated as tf_schema
        from tensorflow.lite.python.interpreter import Interpreter as TfInterpreter

        return TfInterpreter, tf_schema, "tf.lite"


log = logging.getLogger(__name__)

TFLITE_MODEL_FILE = "model.tflite"
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"
# TF Serving's initial batch size: with several interpreters per pool a
# request is split into pieces of ceil(this / interpreters_per_pool) rows.
INITIAL_BATCH_SIZE = 500

_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@dataclass(frozen=True)
class TfLiteOptions:
    """From the flags: whether and how TFLite models are served."""

    prefer_tflite_model: bool = False
    # Interpreters per loaded model (--num_tflite_pools); 0 = one per CPU.
    interpreters: int = 0
    # --num_tflite_interpreters_per_pool: above 1, big requests run split.
    interpreters_per_pool: int = 1

    def pool_size(self) -> int:
        if self.interpreters > 0:
            return self.interpreters
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)


def has_tflite_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, TFLITE_MODEL_FILE))


def legacy_tensor_name(name: str) -> str:
    """'x:0' → 'x': early converters dropped the output index from names."""
    return name.split(":", 1)[0]


def _datatype(dtype: Any) -> int:
    np_dtype = np.dtype(dtype)
    if np_dtype.kind in "SOU":
        return types_pb2.DT_STRING
    return tf.dtypes.as_dtype(np_dtype).as_datatype_enum


def _tensor_info(detail: Mapping[str, Any], shape_key: str) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=detail["name"], dtype=_datatype(detail["dtype"]))
    for size in detail[shape_key]:
        info.tensor_shape.dim.add(size=int(size))
    return info


def metadata_signature_defs(model: bytes) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs stored in the model's `signature_defs_metadata`, if any."""
    root = runtime()[1].Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name() != SIGNATURE_DEFS_METADATA.encode():
            continue
        data = root.Buffers(entry.Buffer()).DataAsNumpy()
        table = flexbuffers.GetRoot(bytes(data)).AsMap
        defs = {}
        for key, value in zip(table.Keys, table.Values, strict=True):
            try:
                defs[key.AsKey] = meta_graph_pb2.SignatureDef.FromString(value.AsStringBytes)
            except Exception as exc:
                raise ValueError("Cannot parse signature def found in flatbuffer.") from exc
        return defs
    return {}


@dataclass(frozen=True)
class _Plan:
    """How one signature runs: on the primary subgraph by tensor index, or by signature runner."""

    runner_key: str | None
    inputs: Mapping[str, int]  # alias → tensor index (primary subgraph)
    outputs: Mapping[str, int]


class _Slot:
    """One interpreter and what it remembers between calls (one caller at a time)."""

    def __init__(self, model: bytes) -> None:
        self.interpreter = runtime()[0](model_content=model, num_threads=1)
        self.interpreter.allocate_tensors()
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.runners: dict[str, Any] = {}


def _interpreter_error(exc: Exception, code: grpc.StatusCode) -> ServingError:
    message = str(exc).strip() or type(exc).__name__
    return GraphError(code, message)


class TfLiteServable(Servable):
    def __init__(self, name: str, version: int, path: str, options: TfLiteOptions) -> None:
        file = os.path.join(path, TFLITE_MODEL_FILE)
        try:
            with open(file, "rb") as f:
                self._model = f.read()
        except OSError as exc:
            raise LoadError(f"{file}: {exc.strerror or exc}", code=5) from exc  # NOT_FOUND
        try:
            first = _Slot(self._model)
        except (ValueError, RuntimeError) as exc:
            # LiteRT's first line says why: not a TFLite flatbuffer, an op it lacks, ...
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise LoadError(
                f"Cannot build a TFLite interpreter for {file}: {reason}", _INVALID
            ) from exc
        signature_defs, self._plans = self._signatures(first.interpreter)
        super().__init__(
            name, version, path, signature_defs, DEFAULT_SERVING_SIGNATURE, device="/CPU:0"
        )
        size = options.pool_size()
        self._pool: queue.LifoQueue[_Slot] = queue.LifoQueue()
        self._pool.put(first)
        for _ in range(size - 1):
            self._pool.put(_Slot(self._model))
        self.pool_size = size
        self.split_rows = 0  # 0 = requests run whole
        self._splitter: ThreadPoolExecutor | None = None
        if options.interpreters_per_pool > 1:
            fixed = self._model_batch_size(first.interpreter)
            per_pool = options.interpreters_per_pool
            self.split_rows = fixed if fixed > 1 else math.ceil(INITIAL_BATCH_SIZE / per_pool)
            if size > 1:
                self._splitter = ThreadPoolExecutor(size - 1, thread_name_prefix="tflite")
        log.info(
            "%s: TFLite model (%s), %d interpreter(s), signatures %s",
            path,
            runtime()[2],
            size,
            ", ".join(sorted(signature_defs)),
        )

    # ------------------------------------------------------------ signatures

    def _signatures(
        self, interpreter: Any
    ) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
        try:
            stored = metadata_signature_defs(self._model)
        except Exception as exc:
            message = f"Invalid SignatureDefs found in TfLite model: {exc}"
            raise LoadError(message, _INVALID) from exc
        if stored:
            return self._metadata_signatures(stored, inputs, outputs)
        runners = interpreter._get_full_signature_list()
        if runners:
            return self._runner_signatures(interpreter, runners)
        return self._default_signature(inputs, outputs)

    @staticmethod
    def _metadata_signatures(
        stored: Mapping[str, meta_graph_pb2.SignatureDef],
        inputs: Mapping[str, Mapping[str, Any]],
        outputs: Mapping[str, Mapping[str, Any]],
    ) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
        def resolve(
            kind: str,
            alias: str,
            info: meta_graph_pb2.TensorInfo,
            tensors: Mapping[str, Mapping[str, Any]],
        ) -> int:
            for candidate in (info.name, legacy_tensor_name(info.name)):
                if candidate in tensors:
                    info.name = candidate  # TF Serving reports the name it matched
                    return int(tensors[candidate]["index"])
            raise LoadError(
                f"Signature {kind} {alias} references an unknown tensor: "
                f"Unknown tensor '{info.name}'.",
                code=13,  # INTERNAL, as TF Serving
            )

        defs: dict[str, meta_graph_pb2.SignatureDef] = {}
        plans: dict[str, _Plan] = {}
        for key, original in stored.items():
            sig = meta_graph_pb2.SignatureDef()
            sig.CopyFrom(original)
            plan_in = {a: resolve("input", a, i, inputs) for a, i in sig.inputs.items()}
            plan_out = {a: resolve("output", a, i, outputs) for a, i in sig.outputs.items()}
            defs[key] = sig
            plans[key] = _Plan(None, plan_in, plan_out)
        return defs, plans

    @staticmethod
    def _runner_signatures(
        interpreter: Any, runners: Mapping[str, Any]
    ) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
        defs: dict[str, meta_graph_pb2.SignatureDef] = {}
        plans: dict[str, _Plan] = {}
        for key in runners:
            runner = interpreter.get_signature_runner(key)
            sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for alias, detail in runner.get_input_details().items():
                sig.inputs[alias].CopyFrom(_tensor_info(detail, "shape_signature"))
            for alias, detail in runner.get_output_details().items():
                sig.outputs[alias].CopyFrom(_tensor_info(detail, "shape_signature"))
            defs[key] = sig
            plans[key] = _Plan(key, {}, {})
        return defs, plans

    @staticmethod
    def _default_signature(
        inputs: Mapping[str, Mapping[str, Any]], outputs: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
        log.warning("No signature def found in TFLite model. Generating one.")
        sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        plan_in: dict[str, int] = {}
        plan_out: dict[str, int] = {}
        sides = ((inputs, sig.inputs, plan_in), (outputs, sig.outputs, plan_out))
        for tensors, infos, plan in sides:
            # Sorted by tensor name: when stripped names clash the last wins, as in TF Serving.
            for name in sorted(tensors):
                alias = legacy_tensor_name(name)
                if alias in plan:
                    log.warning("TFLite tensors %s share the name %r; one is served", name, alias)
                infos[alias].CopyFrom(_tensor_info(tensors[name], "shape"))
                plan[alias] = int(tensors[name]["index"])
        key = DEFAULT_SERVING_SIGNATURE
        return {key: sig}, {key: _Plan(None, plan_in, plan_out)}

    @staticmethod
    def _model_batch_size(interpreter: Any) -> int:
        """The fixed batch size of a single-input model (TF Serving's rule), else -1."""
        details = interpreter.get_input_details()
        if len(details) != 1 or not len(details[0]["shape_signature"]):
            return -1
        return int(details[0]["shape_signature"][0])

    # ------------------------------------------------------------------- run

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        plan = self._plans[signature.key]
        rows = self._split_rows_of(inputs)
        if rows:
            return self._run_split(plan, inputs, output_aliases, rows)
        return self._run_one(plan, inputs, output_aliases)

    def _split_rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Rows of a request to split into mini-batches (0 = run it whole)."""
        if not self.split_rows or not inputs:
            return 0
        dims = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
        if len(dims) != 1:
            return 0
        rows = dims.pop()
        return rows if rows > self.split_rows else 0

    def _run_split(
        self,
        plan: _Plan,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
        rows: int,
    ) -> dict[str, np.ndarray]:
        step = self.split_rows
        pieces = [
            {alias: array[start : start + step] for alias, array in inputs.items()}
            for start in range(0, rows, step)
        ]
        futures = []
        if self._splitter is not None:
            futures = [
                self._splitter.submit(self._run_one, plan, piece, output_aliases)
                for piece in pieces[1:]
            ]
            results = [self._run_one(plan, pieces[0], output_aliases)]
            results += [f.result() for f in futures]
        else:
            results = [self._run_one(plan, piece, output_aliases) for piece in pieces]
        try:
            return {a: np.concatenate([r[a] for r in results]) for a in output_aliases}
        except ValueError as exc:
            raise GraphError(
                grpc.StatusCode.INTERNAL, f"Tensor concat operation failed: {exc}"
            ) from None

    def _run_one(
        self, plan: _Plan, inputs: Mapping[str, np.ndarray], output_aliases: Sequence[str]
    ) -> dict[str, np.ndarray]:
        # Blocks while every interpreter is busy (TF Serving's pool does too).
        # A call the runner makes inline on the event loop waits here only
        # when calls off the loop hold every interpreter, until one ends.
        slot = self._pool.get()
        try:
            if plan.runner_key is not None:
                values = self._invoke_runner(slot, plan.runner_key, inputs)
                outputs = {a: values[a] for a in output_aliases}
            else:
                outputs = self._invoke_primary(slot, plan, inputs, output_aliases)
        finally:
            self._pool.put(slot)
        return {a: v.astype(object) if v.dtype.kind == "S" else v for a, v in outputs.items()}

    @staticmethod
    def _invoke_runner(
        slot: _Slot, key: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        runner = slot.runners.get(key)
        if runner is None:
            runner = slot.runners[key] = slot.interpreter.get_signature_runner(key)
        try:
            return runner(**inputs)  # resizes and allocates when shapes change
        except (ValueError, RuntimeError) as exc:
            raise _interpreter_error(exc, grpc.StatusCode.INVALID_ARGUMENT) from None

    @staticmethod
    def _invoke_primary(
        slot: _Slot, plan: _Plan, inputs: Mapping[str, np.ndarray], output_aliases: Sequence[str]
    ) -> dict[str, np.ndarray]:
        interpreter = slot.interpreter
        resized = False
        try:
            for alias, array in inputs.items():
                index = plan.inputs[alias]
                if slot.shapes.get(index) != array.shape:
                    interpreter.resize_tensor_input(index, array.shape, strict=False)
                    slot.shapes[index] = array.shape
                    resized = True
            if resized:
                interpreter.allocate_tensors()
            for alias, array in inputs.items():
                interpreter.set_tensor(plan.inputs[alias], array)
        except (ValueError, RuntimeError) as exc:
            slot.shapes.clear()  # resize everything again next time
            raise _interpreter_error(exc, grpc.StatusCode.INVALID_ARGUMENT) from None
        try:
            interpreter.invoke()
        except (ValueError, RuntimeError) as exc:
            raise _interpreter_error(exc, grpc.StatusCode.INTERNAL) from None
        return {alias: interpreter.get_tensor(plan.outputs[alias]) for alias in output_aliases}

    def close(self) -> None:
        if self._splitter is not None:
            self._splitter.shutdown(wait=False)
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                break
