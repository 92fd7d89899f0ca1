"""A TF1 SavedModel with one identity per V2 datatype, for the V2 tests."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

v1 = tf.compat.v1

# V2 datatype → TensorFlow dtype; every one is fed to an identity `<NAME>_out`.
DTYPES = {
    "BOOL": tf.bool,
    "INT8": tf.int8,
    "INT16": tf.int16,
    "INT32": tf.int32,
    "INT64": tf.int64,
    "UINT8": tf.uint8,
    "UINT16": tf.uint16,
    "UINT32": tf.uint32,
    "UINT64": tf.uint64,
    "FP16": tf.float16,
    "FP32": tf.float32,
    "FP64": tf.float64,
    "BYTES": tf.string,
    "BF16": tf.bfloat16,
}


def write_v2_dtypes_model(export_dir: Path) -> Path:
    """`serving_default`: inputs `<DATATYPE>` [-1, 2] → outputs `<DATATYPE>_out` (identity);
    `double`: `x` FP32 [-1] → `y` = 2x."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        predict = v1.saved_model.signature_constants.PREDICT_METHOD_NAME
        inputs, outputs = {}, {}
        for name, dtype in DTYPES.items():
            placeholder = v1.placeholder(dtype, [None, 2], name=name)
            inputs[name] = info(placeholder)
            outputs[f"{name}_out"] = info(tf.identity(placeholder, name=f"{name}_out"))
        x = v1.placeholder(tf.float32, [None], name="x")
        signatures = {
            "serving_default": build(inputs, outputs, predict),
            "double": build({"x": info(x)}, {"y": info(x * 2.0)}, predict),
        }
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
        )
        builder.save()
    return export_dir
