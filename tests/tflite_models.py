"""A TFLite model converted at test time, with two signatures and several inputs/outputs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import tensorflow as tf


class _Calc(tf.Module):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.float32, name="a"),
            tf.TensorSpec([None], tf.int32, name="b"),
        ]
    )
    def calc(self, a, b):
        return {"total": tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32), "doubled": a * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def scale(self, x):
        return {"scaled": x * 10.0}


def write_converted_model(version_dir: Path) -> Path:
    """`version_dir/model.tflite`, converted from a SavedModel by TFLiteConverter.

    Signatures (the model's own SignatureDef table):
    - `serving_default`: a float[-1,2], b int32[-1] → total = sum(a, 1) + b, doubled = 2a
    - `scale`: x float[-1] → scaled = 10x
    """
    module = _Calc()
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(
            module, saved, signatures={"serving_default": module.calc, "scale": module.scale}
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved, signature_keys=["serving_default", "scale"]
        )
        model = converter.convert()
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.tflite"
    path.write_bytes(model)
    return path
