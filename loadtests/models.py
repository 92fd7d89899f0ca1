"""The benchmark's own models and the request each load run sends.

Both are TF1 graphs with plain variables, so the server loads them through
its fast Session path (a Keras 3 export would take the slower TF2
object-graph fallback; the bench checks the server log to be sure).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HALF_PLUS_TWO = "half_plus_two"
CNN = "cnn"


@dataclass(frozen=True)
class CnnShape:
    """A compute-bound CNN: 3x3 conv+pool blocks → dense → softmax.

    The default (~2.5M parameters, ~0.1 GFLOP per image) spends about a
    millisecond of CPU per row even in large batches, so per-request
    overhead should be a small share of its cost.
    """

    size: int = 32
    channels: tuple[int, ...] = (64, 128, 256)
    dense: int = 512
    classes: int = 10

    @property
    def parameters(self) -> int:
        total, c_in = 0, 3
        for c in self.channels:
            total += 9 * c_in * c + c
            c_in = c
        flat = (self.size // 2 ** len(self.channels)) ** 2 * c_in
        return total + flat * self.dense + self.dense + self.dense * self.classes + self.classes

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, 3)

    def tag(self) -> str:
        return f"{self.size}-{'x'.join(map(str, self.channels))}-{self.dense}-{self.classes}"


QUICK_CNN = CnnShape(size=8, channels=(8, 16), dense=32, classes=4)


@dataclass(frozen=True)
class BenchModel:
    """What a load run needs to know about a model."""

    name: str
    input_name: str
    output_name: str
    row: np.ndarray  # one input row (batch of one is row[None])

    def expected(self, out: np.ndarray) -> bool:
        """Cheap correctness check of one response row."""
        if self.name == HALF_PLUS_TWO:
            return bool(np.allclose(out, self.row * 0.5 + 2.0))
        return out.shape[-1] > 0 and bool(np.isclose(out.sum(), 1.0, atol=1e-3))


def write_cnn(export_dir: str | Path, shape: CnnShape, seed: int = 11) -> Path:
    """The compute-bound model as a TF1 SavedModel with plain variables."""
    import tensorflow as tf

    v1 = tf.compat.v1
    export_dir = Path(export_dir)
    rng = np.random.default_rng(seed)

    def variable(fan_in: int, dims: tuple[int, ...], name: str):
        init = rng.normal(scale=(2.0 / fan_in) ** 0.5, size=dims).astype("float32")
        return v1.Variable(init, name=name)

    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        x = v1.placeholder(tf.float32, shape=[None, *shape.row_shape], name="image")
        h, c_in = x, 3
        for i, c in enumerate(shape.channels):
            w = variable(9 * c_in, (3, 3, c_in, c), f"conv{i}")
            b = v1.Variable(np.zeros(c, "float32"), name=f"conv{i}_bias")
            h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w, 1, "SAME") + b), 2, 2, "VALID")
            c_in = c
        flat = (shape.size // 2 ** len(shape.channels)) ** 2 * c_in
        h = tf.reshape(h, [-1, flat])
        w = variable(flat, (flat, shape.dense), "dense")
        h = tf.nn.relu(tf.matmul(h, w) + v1.Variable(np.zeros(shape.dense, "float32")))
        w = variable(shape.dense, (shape.dense, shape.classes), "logits")
        logits = tf.matmul(h, w) + v1.Variable(np.zeros(shape.classes, "float32"))
        probs = tf.nn.softmax(logits, name="probabilities")
        sess.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            {"image": info(x)}, {"probabilities": info(probs)}, "tensorflow/serving/predict"
        )
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.save()
    return export_dir


def install_version(model_dir: Path, version: int, write) -> Path:
    """Write into a staging folder, then rename: the server never sees half a version."""
    target = model_dir / str(version)
    if (target / "saved_model.pb").exists():
        return target
    staging = model_dir / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    write(staging)
    staging.rename(target)
    return target


def model_dirs(root: Path, shape: CnnShape) -> dict[str, Path]:
    """The models' base paths, created (maybe empty) so a server can watch them."""
    stamp = root / f".cnn-{shape.tag()}"
    if not stamp.exists():  # another CNN shape was written here: rewrite it
        shutil.rmtree(root / CNN, ignore_errors=True)
        for old in root.glob(".cnn-*"):
            old.unlink()
    paths = {HALF_PLUS_TWO: root / HALF_PLUS_TWO, CNN: root / CNN}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return paths


def write_models(root: Path, shape: CnnShape) -> dict[str, Path]:
    """Both benchmark models under root/<name>/1 (kept if already there)."""
    from serving.examples import write_half_plus_two

    paths = model_dirs(root, shape)
    install_version(paths[HALF_PLUS_TWO], 1, lambda d: write_half_plus_two(d, 0.5, 2.0))
    install_version(paths[CNN], 1, lambda d: write_cnn(d, shape))
    return paths


def bench_models(shape: CnnShape) -> dict[str, BenchModel]:
    rng = np.random.default_rng(3)
    image = rng.uniform(size=shape.row_shape).astype(np.float32)
    return {
        HALF_PLUS_TWO: BenchModel(HALF_PLUS_TWO, "x", "y", np.array([1.5], np.float32)),
        CNN: BenchModel(CNN, "image", "probabilities", image),
    }


def grpc_body(model: BenchModel) -> bytes:
    """A gRPC-framed PredictRequest: flag byte, 4-byte big-endian length, message."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model.name
    request.model_spec.signature_name = "serving_default"
    request.inputs[model.input_name].CopyFrom(tf.make_tensor_proto(model.row[None]))
    message = request.SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def rest_body(model: BenchModel) -> bytes:
    import json

    return json.dumps({"instances": [model.row.tolist()]}).encode()
