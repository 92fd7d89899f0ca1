"""Custom TensorFlow op libraries: TF Text's when a model needs them, others at start-up.

TF Serving links TensorFlow Text's ops into its binary, so models that
tokenize in-graph serve there; here they come from the `tensorflow-text`
package (the `model-server[text]` extra) when it is installed. Its op
libraries are large (each links its own dependencies), so they are loaded
only when a model's graph uses ops not registered yet, once, before that
model is imported. Any other op library (a `.so` built against this TensorFlow) is
named with `--custom_op_libraries` and loaded at start-up; one that does not
load stops start-up, since the models that need it could never load. Op
registration is process-wide: one load serves every model.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Iterable

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import op_def_registry

log = logging.getLogger(__name__)

TEXT_PACKAGE = "tensorflow_text"


class OpLibraryError(RuntimeError):
    """A requested op library could not be loaded."""


def missing_ops(meta_graph: meta_graph_pb2.MetaGraphDef) -> set[str]:
    """Op types the graph (and its functions) uses that no library has registered."""
    graph = meta_graph.graph_def
    used = {node.op for node in graph.node}
    for function in graph.library.function:
        used.update(node.op for node in function.node_def)
    defined = {function.signature.name for function in graph.library.function}
    return {op for op in used - defined if op_def_registry.get(op) is None}


def register_missing_ops(meta_graph: meta_graph_pb2.MetaGraphDef) -> None:
    """Load TensorFlow Text's ops if this graph needs ops not registered yet."""
    if missing_ops(meta_graph):
        load_tensorflow_text()


@functools.cache
def load_tensorflow_text() -> str | None:
    """Register TensorFlow Text's ops if the package is installed; its version."""
    try:
        module = importlib.import_module(TEXT_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name == TEXT_PACKAGE:
            return None  # not installed: nothing to register
        log.warning("tensorflow-text is installed but did not import: %s", exc)
        return None
    except (ImportError, tf.errors.OpError) as exc:
        # Most often a build for another TensorFlow: say so, serve the rest.
        message = getattr(exc, "message", None) or str(exc)
        log.warning("tensorflow-text ops did not load: %s", message.strip().splitlines()[0])
        return None
    version = str(getattr(module, "__version__", "?"))
    log.info("TensorFlow Text ops loaded (tensorflow-text %s)", version)
    return version


def load_op_libraries(paths: Iterable[str]) -> None:
    """Load each `.so` (ops and kernels) with TensorFlow's plugin loader."""
    for path in paths:
        if not os.path.isfile(path):
            raise OpLibraryError(f"custom op library {path}: no such file")
        try:
            tf.load_library(path)
        except (tf.errors.OpError, OSError, RuntimeError) as exc:
            message = (getattr(exc, "message", None) or str(exc)).strip()
            first = message.splitlines()[0] if message else type(exc).__name__
            raise OpLibraryError(f"custom op library {path} did not load: {first}") from None
        log.info("custom op library loaded: %s", path)


def explain_missing_op(message: str) -> str:
    """TensorFlow's "Op type not registered" error, with how to register the op here."""
    if "Op type not registered" not in message:
        return message
    return (
        f"{message} (a custom op: install model-server[text] for TensorFlow Text's ops, "
        "or load its library with --custom_op_libraries)"
    )
