"""SavedModels and TF1 Hub modules, loaded into a TF1 Session of their own.

Why one Session-based loader for everything (see docs in README):
- it loads every SavedModel TF Serving's own test data holds, TF1 and TF2
  (reference variables, assets with main ops, ops pinned to absent GPUs);
- running through `Session._make_callable_from_options` skips Python's
  fed-shape check, so shape [1] is accepted for a [None, 1] input exactly as
  TF Serving's C++ Session::Run accepts it, and costs a fraction of
  `Session.run` or a TF2 signature function per call (`make bench` measures
  both paths; callables.py picks per signature whether ops run in the calling
  thread);
- TF1 Hub modules need their `table_initializer` collection run with asset
  paths fed, which the TF1 loader skips: we run it ourselves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from serving.errors import GraphError, ServingError
from serving.servables.base import (
    DEFAULT_SERVING_SIGNATURE,
    HUB_DEFAULT_SIGNATURE,
    LoadError,
    Servable,
)
from serving.servables.callables import TunedCallable
from serving.servables.ops import explain_missing_op, register_missing_ops
from serving.servables.signature import Signature

log = logging.getLogger(__name__)

HUB_MODULE_FILE = "tfhub_module.pb"
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_TF_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class SessionOptions:
    """How sessions are built; derived from the server flags."""

    tags: frozenset[str] = frozenset({"serve"})
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    gpu_memory_fraction: float = 0.0
    allow_growth: bool | None = None
    # TensorFlow device string the graph is placed on ("" = TF decides).
    device: str = ""
    # Drop the export's own device pins so the whole graph lands on `device`
    # (False: only unpinned ops go there, as in TF Serving).
    clear_devices: bool = True
    # The device as the operator named it, for status/logs/metrics (a capped
    # model's virtual GPU has another TF name); "" = `device`.
    device_label: str = ""
    base_config: config_pb2.ConfigProto = field(default_factory=config_pb2.ConfigProto)

    def config_proto(self) -> config_pb2.ConfigProto:
        config = config_pb2.ConfigProto()
        config.CopyFrom(self.base_config)
        config.allow_soft_placement = True
        if self.intra_op_threads:
            config.intra_op_parallelism_threads = self.intra_op_threads
        if self.inter_op_threads:
            config.inter_op_parallelism_threads = self.inter_op_threads
        if self.gpu_memory_fraction:
            config.gpu_options.per_process_gpu_memory_fraction = self.gpu_memory_fraction
        if self.allow_growth is not None:
            config.gpu_options.allow_growth = self.allow_growth
        return config


def is_hub_module(path: str) -> bool:
    return os.path.isfile(os.path.join(path, HUB_MODULE_FILE))


class VariablesNotRestored(LoadError):
    """The Session loader left variables uninitialised (see object_graph.py)."""


def read_meta_graph(path: str, tags: frozenset[str]) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef the loader would pick, for its signature_def map."""
    try:
        return loader_impl.SavedModelLoader(path).get_meta_graph_def_from_tags(sorted(tags))
    except (RuntimeError, OSError, ValueError) as exc:
        raise LoadError(str(exc).strip().splitlines()[0]) from exc


def _short_device(name: str) -> str:
    """'/job:localhost/replica:0/task:0/device:CPU:1' → '/CPU:1'."""
    spec = tf.DeviceSpec.from_string(name)
    return f"/{spec.device_type}:{spec.device_index}" if spec.device_type else name


def tf_error_summary(message: str) -> str:
    """One line of a TensorFlow error that keeps its cause.

    Graph errors open with a bare "Graph execution error:" and put the cause
    after a "Detected at node" trace: the first line alone says nothing.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    if not first.endswith(":") or len(lines) == 1:
        return first
    node = ""
    rest = lines[1:]
    for index, line in enumerate(rest):
        if line.startswith("Node: "):
            node = line[len("Node: ") :].strip("'")
            rest = rest[index + 1 :]
            break
    for line in rest:
        if line.startswith(("Detected at node", 'File "', "[[")):
            continue
        return f"{first} {line}" + (f" (node {node})" if node else "")
    return first


def status_from_tf_error(exc: tf.errors.OpError) -> ServingError:
    code = _TF_CODES.get(exc.error_code, grpc.StatusCode.INTERNAL)
    return GraphError(code, exc.message)


class SessionServable(Servable):
    def __init__(self, name: str, version: int, path: str, options: SessionOptions) -> None:
        self._graph = tf.Graph()
        # Kept so tests and diagnostics can see what the session really got.
        self.config = options.config_proto()
        self._session = tf.compat.v1.Session(graph=self._graph, config=self.config)
        self._callables: dict[tuple, Callable[..., list[np.ndarray]]] = {}
        self._lock = threading.Lock()
        hub = is_hub_module(path)
        tags = [] if hub else sorted(options.tags)
        try:
            meta_graph = self._load(path, tags, options)
        except Exception:
            self._session.close()
            raise
        signature_defs = dict(meta_graph.signature_def)
        default = HUB_DEFAULT_SIGNATURE if hub else DEFAULT_SERVING_SIGNATURE
        super().__init__(
            name, version, path, signature_defs, default, options.device_label or options.device
        )
        self.is_hub_module = hub

    def _load(
        self, path: str, tags: list[str], options: SessionOptions
    ) -> meta_graph_pb2.MetaGraphDef:
        device = options.device
        if not any(os.path.isfile(os.path.join(path, f)) for f in _SAVED_MODEL_FILES):
            raise LoadError(
                f"SavedModel file does not exist at: {path}/{{saved_model.pbtxt|saved_model.pb}}",
                code=grpc.StatusCode.NOT_FOUND.value[0],
            )
        started = time.monotonic()
        try:
            loader = loader_impl.SavedModelLoader(path)
            stored = loader.get_meta_graph_def_from_tags(tags)
            register_missing_ops(stored)  # TF Text's, if the graph needs them
            # Read before loading: clear_devices strips the pins in place.
            pinned = {node.device for node in stored.graph_def.node if node.device}
            # The device scope applies to every imported op without a device
            # of its own; with clear_devices that is all of them.
            with self._graph.as_default(), self._graph.device(device or None):
                meta_graph = loader.load(
                    self._session, tags, clear_devices=bool(device) and options.clear_devices
                )
                self._init_tables(path, meta_graph)
                self._check_restored(meta_graph)
        except LoadError:
            raise
        except (tf.errors.OpError, RuntimeError, ValueError, OSError, KeyError) as exc:
            message = (getattr(exc, "message", None) or str(exc)).strip()
            code = exc.error_code if isinstance(exc, tf.errors.OpError) else 2
            first = explain_missing_op(tf_error_summary(message)) if message else repr(exc)
            raise LoadError(first, code) from exc
        self._warn_on_absent_devices(path, pinned, device if options.clear_devices else "")
        log.debug("session for %s built in %.3fs", path, time.monotonic() - started)
        return meta_graph

    def _init_tables(self, path: str, meta_graph: meta_graph_pb2.MetaGraphDef) -> None:
        """Run table initializers the TF1 loader leaves alone (Hub modules)."""
        if loader_impl.get_init_op(meta_graph) is not None:
            return  # a main op / legacy init op already initialised the tables
        initializers = self._graph.get_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS)
        if initializers:
            assets = loader_impl.get_asset_tensors(path, meta_graph)
            self._session.run(initializers, feed_dict=assets)

    def _check_restored(self, meta_graph: meta_graph_pb2.MetaGraphDef) -> None:
        handles = [n.name for n in meta_graph.graph_def.node if n.op == "VarHandleOp"]
        if not handles:
            return
        checks = [
            tf.raw_ops.VarIsInitializedOp(resource=self._graph.get_tensor_by_name(f"{h}:0"))
            for h in handles
        ]
        missing = [h for h, ok in zip(handles, self._session.run(checks), strict=True) if not ok]
        if missing:
            raise VariablesNotRestored(
                f"variables not restored by the Session loader: {', '.join(missing[:5])}"
            )

    def _warn_on_absent_devices(self, path: str, pinned: set[str], placed_on: str) -> None:
        present = {
            (spec.device_type, spec.device_index)
            for spec in (tf.DeviceSpec.from_string(d.name) for d in self._session.list_devices())
        }

        def available(device: str) -> bool:
            spec = tf.DeviceSpec.from_string(device)
            if spec.device_type is None:
                return True
            return any(
                kind == spec.device_type.upper() and spec.device_index in (None, index)
                for kind, index in present
            )

        missing = sorted(d for d in pinned if not available(d))
        if missing and placed_on:
            log.warning(
                "%s: graph pins ops to %s, not present here; placing the whole graph on %s",
                path,
                ", ".join(missing),
                placed_on,
            )
        elif missing:
            log.warning(
                "%s: graph pins ops to %s, not present here; soft placement moves them",
                path,
                ", ".join(missing),
            )

    def _callable(
        self, signature: Signature, feed: tuple[str, ...], fetch: tuple[str, ...]
    ) -> Callable[..., list[np.ndarray]]:
        key = (signature.key, feed, fetch)
        fn = self._callables.get(key)
        if fn is None:
            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    opts = config_pb2.CallableOptions()
                    opts.feed.extend(signature.inputs[a].tensor_name for a in feed)
                    opts.fetch.extend(signature.outputs[a].tensor_name for a in fetch)
                    try:
                        fn = TunedCallable(self._session._make_callable_from_options, opts)
                    except tf.errors.OpError as exc:
                        raise status_from_tf_error(exc) from None
                    self._callables[key] = fn
        return fn

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        feed = tuple(inputs)
        fetch = tuple(output_aliases)
        fn = self._callable(signature, feed, fetch)
        try:
            values = fn(*(inputs[a] for a in feed))
        except tf.errors.OpError as exc:
            raise status_from_tf_error(exc) from None
        return dict(zip(fetch, values, strict=True))

    def trace(
        self, signature: Signature, inputs: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        """Run once with a full trace: outputs, and the nodes each device executed.

        For diagnostics and tests: proves where the graph actually runs.
        """
        opts = config_pb2.CallableOptions()
        feed = tuple(inputs)
        fetch = tuple(signature.outputs)
        opts.feed.extend(signature.inputs[a].tensor_name for a in feed)
        opts.fetch.extend(signature.outputs[a].tensor_name for a in fetch)
        opts.run_options.trace_level = config_pb2.RunOptions.FULL_TRACE
        metadata = config_pb2.RunMetadata()
        fn = self._session._make_callable_from_options(opts)
        values = fn(*(inputs[a] for a in feed), run_metadata=metadata)
        nodes = {
            _short_device(stats.device): [
                n.node_name for n in stats.node_stats if not n.node_name.startswith("_")
            ]
            for stats in metadata.step_stats.dev_stats
        }
        return dict(zip(fetch, values, strict=True)), nodes

    def close(self) -> None:
        self._callables.clear()
        self._session.close()
