"""Which ops a stored graph still needs, and loading op libraries."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from serving.servables.ops import OpLibraryError, explain_missing_op, load_op_libraries, missing_ops


def meta_graph(*ops: str, function_ops: tuple[str, ...] = ()) -> meta_graph_pb2.MetaGraphDef:
    meta = meta_graph_pb2.MetaGraphDef()
    for index, op in enumerate(ops):
        meta.graph_def.node.add(name=f"n{index}", op=op)
    if function_ops:
        function = meta.graph_def.library.function.add()
        function.signature.name = "my_fn"
        for index, op in enumerate(function_ops):
            function.node_def.add(name=f"f{index}", op=op)
    return meta


def test_registered_ops_and_functions_are_not_missing() -> None:
    assert missing_ops(meta_graph("Placeholder", "AddV2", "my_fn", function_ops=("Mul",))) == set()


def test_unregistered_ops_are_missing_also_inside_functions() -> None:
    meta = meta_graph("AddV2", "Custom>Outer", function_ops=("Custom>Inner", "Mul"))
    assert missing_ops(meta) == {"Custom>Outer", "Custom>Inner"}


def test_a_real_graph_needs_nothing_more() -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        tf.add(tf.multiply(x, 0.5), 2.0, name="y")
    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.CopyFrom(graph.as_graph_def())
    assert missing_ops(meta) == set()


def test_missing_op_message_says_how_to_register_it() -> None:
    message = "Op type not registered 'TFText>X' in binary running on host."
    assert "--custom_op_libraries" in explain_missing_op(message)
    assert explain_missing_op("other failure") == "other failure"


def test_bad_library_is_named(tmp_path: Path) -> None:
    with pytest.raises(OpLibraryError, match=r"custom op library .*absent\.so: no such file"):
        load_op_libraries([str(tmp_path / "absent.so")])
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(OpLibraryError, match=rf"custom op library {junk} did not load: "):
        load_op_libraries([str(junk)])
