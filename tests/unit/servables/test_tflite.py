"""TfLiteServable in-process: signatures, runs, the interpreter pool, split requests."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving.errors import GraphError, LoadError
from serving.servables.loader import load_placed, load_servable
from serving.servables.session_bundle import SessionOptions
from serving.servables.tflite import TfLiteOptions, TfLiteServable
from tests.tflite_models import write_converted_model


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    version = tmp_path_factory.mktemp("converted") / "1"
    write_converted_model(version)
    return version


def _shared(testdata: Path, name: str) -> Path:
    return testdata / "tf_serving" / name / "00000123"


def _shape(info) -> list[int]:
    return [d.size for d in info.tensor_shape.dim]


def test_model_without_signatures_gets_tf_servings_default(testdata: Path) -> None:
    path = _shared(testdata, "saved_model_half_plus_two_tflite")
    servable = TfLiteServable("m", 123, str(path), TfLiteOptions(interpreters=1))
    try:
        assert list(servable.signature_defs) == ["serving_default"]
        sig = servable.signature_defs["serving_default"]
        assert sig.method_name == "tensorflow/serving/predict"
        assert sig.inputs["x"].name == "x"
        assert sig.inputs["x"].dtype == types_pb2.DT_FLOAT
        assert _shape(sig.inputs["x"]) == [1, 1]
        assert sig.outputs["y"].name == "y"
        signature = servable.signatures["serving_default"]
        y = servable.run(signature, {"x": np.array([1.0, 2.0, 5.0], np.float32)}, ["y"])["y"]
        np.testing.assert_array_equal(y, [2.5, 3.0, 4.5])
    finally:
        servable.close()


def test_signature_defs_from_model_metadata(testdata: Path) -> None:
    path = _shared(testdata, "saved_model_half_plus_two_tflite_with_sigdef")
    servable = TfLiteServable("m", 123, str(path), TfLiteOptions(interpreters=1))
    try:
        sig = servable.signature_defs["serving_default"]
        # The stored name is "tflite_input:0"; the converter dropped the ":0".
        assert sig.inputs["x"].name == "tflite_input"
        assert sig.outputs["y"].name == "y"
        signature = servable.signatures["serving_default"]
        x = np.array([[1.0], [2.0], [5.0]], np.float32)
        np.testing.assert_array_equal(servable.run(signature, {"x": x}, ["y"])["y"], x * 0.5 + 2)
    finally:
        servable.close()


def test_converted_model_serves_its_signature_runner_signatures(converted: Path) -> None:
    servable = TfLiteServable("m", 1, str(converted), TfLiteOptions(interpreters=2))
    try:
        assert set(servable.signature_defs) == {"serving_default", "scale"}
        sig = servable.signature_defs["serving_default"]
        assert set(sig.inputs) == {"a", "b"}
        assert set(sig.outputs) == {"total", "doubled"}
        assert _shape(sig.inputs["a"]) == [-1, 2]
        assert sig.inputs["b"].dtype == types_pb2.DT_INT32
        a = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
        b = np.array([10, 20, 30], np.int32)
        out = servable.run(servable.signatures["serving_default"], {"a": a, "b": b}, ["total"])
        assert list(out) == ["total"]
        np.testing.assert_array_equal(out["total"], [13, 27, 41])
        out = servable.run(servable.signatures["scale"], {"x": np.ones(4, np.float32)}, ["scaled"])
        np.testing.assert_array_equal(out["scaled"], [10.0] * 4)
        # Shapes change per call (batches of any size): inputs are resized each time.
        out = servable.run(
            servable.signatures["serving_default"], {"a": a[:1], "b": b[:1]}, ["doubled"]
        )
        np.testing.assert_array_equal(out["doubled"], [[2, 4]])
    finally:
        servable.close()


def test_shape_the_model_cannot_use_is_invalid_argument(converted: Path) -> None:
    servable = TfLiteServable("m", 1, str(converted), TfLiteOptions(interpreters=1))
    try:
        signature = servable.signatures["serving_default"]
        bad = {"a": np.ones((2, 2), np.float32), "b": np.ones(3, np.int32)}
        with pytest.raises(GraphError) as err:
            servable.run(signature, bad, ["total"])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        good = {"a": np.ones((3, 2), np.float32), "b": np.ones(3, np.int32)}
        np.testing.assert_array_equal(servable.run(signature, good, ["total"])["total"], [3] * 3)
    finally:
        servable.close()


def test_pool_serves_concurrent_callers_and_waits_when_all_are_busy(testdata: Path) -> None:
    path = _shared(testdata, "saved_model_half_plus_two_tflite")
    servable = TfLiteServable("m", 123, str(path), TfLiteOptions(interpreters=2))
    signature = servable.signatures["serving_default"]
    try:
        assert servable.pool_size == 2

        def call(i: int) -> None:
            x = np.full((1 + i % 5, 1), i, np.float32)
            np.testing.assert_array_equal(
                servable.run(signature, {"x": x}, ["y"])["y"], x * 0.5 + 2
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(200)))
        # One interpreter taken away: calls still run on the other.
        held = servable._pool.get()
        call(3)
        # Both taken: a call waits until one comes back.
        other = servable._pool.get()
        done = threading.Event()
        worker = threading.Thread(target=lambda: (call(4), done.set()))
        worker.start()
        assert not done.wait(0.3)
        servable._pool.put(other)
        assert done.wait(10)
        worker.join()
        servable._pool.put(held)
    finally:
        servable.close()


def test_interpreters_per_pool_splits_big_requests(converted: Path) -> None:
    options = TfLiteOptions(interpreters=2, interpreters_per_pool=4)
    servable = TfLiteServable("m", 1, str(converted), options)
    try:
        assert servable.split_rows == 125  # ceil(500 / 4)
        rows = 300
        a = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
        b = np.arange(rows, dtype=np.int32)
        out = servable.run(
            servable.signatures["serving_default"], {"a": a, "b": b}, ["total", "doubled"]
        )
        np.testing.assert_array_equal(out["total"], a.sum(axis=1) + b)
        np.testing.assert_array_equal(out["doubled"], a * 2)
    finally:
        servable.close()


def test_loader_uses_tflite_only_when_preferred(testdata: Path, tmp_path: Path) -> None:
    path = str(_shared(testdata, "saved_model_half_plus_two_tflite"))
    servable = load_placed("m", 123, path, [SessionOptions()], TfLiteOptions(True, 1))
    assert isinstance(servable, TfLiteServable)
    servable.close()
    # As TF Serving: without the flag the folder is read as a SavedModel, which it is not.
    with pytest.raises(LoadError, match="--prefer_tflite_model") as err:
        load_servable("m", 123, path, SessionOptions())
    assert "SavedModel file does not exist" in str(err.value)


def test_corrupt_model_fails_the_load(tmp_path: Path) -> None:
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(LoadError):
        TfLiteServable("m", 1, str(tmp_path), TfLiteOptions(interpreters=1))


def test_model_needing_flex_ops_fails_the_load_with_litert_reason(tmp_path: Path) -> None:
    import tensorflow as tf

    class ParseExamples(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def parse(self, serialized):
            spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}
            return {"x": tf.io.parse_example(serialized, spec)["x"]}

    module = ParseExamples()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.parse.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    (tmp_path / "model.tflite").write_bytes(converter.convert())
    with pytest.raises(LoadError, match="Select TensorFlow op"):
        TfLiteServable("m", 1, str(tmp_path), TfLiteOptions(interpreters=1))


def test_warmup_requests_replay_on_a_tflite_model(testdata: Path, tmp_path: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.servables.warmup import WARMUP_FILE, warmup

    version = tmp_path / "123"
    version.mkdir()
    shutil.copy(_shared(testdata, "saved_model_half_plus_two_tflite") / "model.tflite", version)
    (version / WARMUP_FILE).parent.mkdir()
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], tf.float32))
    with tf.io.TFRecordWriter(str(version / WARMUP_FILE)) as writer:
        writer.write(entry.SerializeToString())
    servable = TfLiteServable("m", 123, str(version), TfLiteOptions(interpreters=1))
    try:
        assert warmup(servable, 2) == 1
    finally:
        servable.close()
