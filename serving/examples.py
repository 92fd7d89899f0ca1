"""Writes the example models `make serve` serves, and tests build on.

Every model is written with TensorFlow at setup time, nothing is downloaded:
- half_plus_two: a TF1 SavedModel (y = a*x + b) in TF Serving's test-model
  shape, with predict, classify and regress signatures;
- a TF2 Keras model (a small classifier MLP), exported as a SavedModel;
- a TF1 Hub module: text embedding with a vocabulary asset and a lookup
  table, `default` and a multi-output `tokens` signature.

`python -m serving.examples DIR` writes them all under DIR plus a
`models.config` naming them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

v1 = tf.compat.v1
HUB_MODULE_DEF = b"\x08\x03"  # hub ModuleDef { format: FORMAT_V3 }
VOCABULARY = ["<unk>", "the", "cat", "sat", "on", "mat", "dog", "ran"]
EMBEDDING_DIM = 4


def _tensor_info(tensor: tf.Tensor) -> meta_graph_pb2.TensorInfo:
    return v1.saved_model.utils.build_tensor_info(tensor)


def write_half_plus_two(export_dir: str | Path, a: float = 0.5, b: float = 2.0) -> Path:
    """y = a*x + b, as TF Serving's saved_model_half_plus_two_cpu (TF1 graph)."""
    export_dir = Path(export_dir)
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        var_a = v1.Variable(a, name="a")
        var_b = v1.Variable(b, name="b")
        x = v1.placeholder(tf.float32, shape=[None, 1], name="x")
        y = tf.add(tf.multiply(var_a, x), var_b, name="y")
        serialized = v1.placeholder(tf.string, name="tf_example")
        features = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})
        y_example = tf.add(tf.multiply(var_a, features["x"]), var_b, name="y_example")
        sess.run(v1.global_variables_initializer())
        signatures = {
            "serving_default": v1.saved_model.signature_def_utils.build_signature_def(
                {"x": _tensor_info(x)}, {"y": _tensor_info(y)}, "tensorflow/serving/predict"
            ),
            "classify_x_to_y": v1.saved_model.signature_def_utils.build_signature_def(
                {"inputs": _tensor_info(serialized)},
                {"scores": _tensor_info(y_example)},
                "tensorflow/serving/classify",
            ),
            "regress_x_to_y": v1.saved_model.signature_def_utils.build_signature_def(
                {"inputs": _tensor_info(serialized)},
                {"outputs": _tensor_info(y_example)},
                "tensorflow/serving/regress",
            ),
        }
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
        )
        builder.save()
    return export_dir


def _keras_mlp(seed: int) -> tf.keras.Model:
    rng = np.random.default_rng(seed)
    inputs = tf.keras.Input(shape=(4,), name="features", dtype="float32")
    hidden = tf.keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    probs = tf.keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    model = tf.keras.Model(inputs, probs)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def write_keras_classifier(export_dir: str | Path, seed: int = 7) -> Path:
    """A TF2 Keras MLP: 4 features → 3 class probabilities (`serving_default`).

    Exported with Keras's ExportArchive, the way Keras documents exporting for
    TF Serving, with a named output.
    """
    export_dir = Path(export_dir)
    model = _keras_mlp(seed)
    archive = tf.keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda features: {"probabilities": model(features)},
        input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")],
    )
    archive.write_out(str(export_dir), verbose=False)
    return export_dir


def write_keras_module_export(export_dir: str | Path, seed: int = 7) -> Path:
    """The same MLP saved through a bare tf.Module with tf.saved_model.save.

    Only TF2's object-graph loader restores this export; it exercises the
    server's fallback from the Session loader.
    """
    export_dir = Path(export_dir)
    model = _keras_mlp(seed)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
    def serve(features: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model(features)}

    module = tf.Module()
    module.model = model
    module.serve = serve
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": serve})
    return export_dir


def keras_reference(features: np.ndarray, seed: int = 7) -> np.ndarray:
    """The example classifier's output, computed in-process (for tests)."""
    return _keras_mlp(seed)(features).numpy()


def write_text_embedding_hub_module(export_dir: str | Path) -> Path:
    """A TF1 Hub module: sentences → mean token embedding, via a vocabulary table.

    Signatures: `default` (default → default) and `tokens` (default →
    {embedding, token_count}), the multi-output case.
    """
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = export_dir.parent / f".{export_dir.name}-tokens.txt"
    vocab_file.write_text("\n".join(VOCABULARY) + "\n")
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sentences = v1.placeholder(tf.string, shape=[None], name="sentences")
        asset = tf.constant(str(vocab_file), name="asset_path")
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset)
        table = tf.lookup.StaticVocabularyTable(
            tf.lookup.TextFileInitializer(
                asset,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            num_oov_buckets=1,
        )
        weights = np.arange((len(VOCABULARY) + 1) * EMBEDDING_DIM, dtype=np.float32)
        embeddings = v1.Variable(weights.reshape(-1, EMBEDDING_DIM) / 10.0, name="embeddings")
        tokens = tf.strings.split(sentences)
        ids = table.lookup(tokens)
        embedded = tf.nn.embedding_lookup(embeddings, ids)
        mean = tf.math.reduce_mean(embedded, axis=1)
        default = tf.where(tf.math.is_nan(mean), tf.zeros_like(mean), mean, name="embedding")
        counts = tf.identity(tokens.row_lengths(), name="token_count")
        sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
        signatures = {
            "default": v1.saved_model.signature_def_utils.build_signature_def(
                {"default": _tensor_info(sentences)}, {"default": _tensor_info(default)}
            ),
            "tokens": v1.saved_model.signature_def_utils.build_signature_def(
                {"default": _tensor_info(sentences)},
                {"embedding": _tensor_info(default), "token_count": _tensor_info(counts)},
            ),
        }
        builder = v1.saved_model.Builder(str(export_dir))
        # Hub's format: empty tag set, no init op; table initializers live in
        # the `table_initializer` collection and assets in `asset_filepaths`.
        builder.add_meta_graph_and_variables(
            sess,
            [],
            signature_def_map=signatures,
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
        )
        builder.save()
    (export_dir / "tfhub_module.pb").write_bytes(HUB_MODULE_DEF)
    vocab_file.unlink()
    return export_dir


def reference_embedding(sentence: str) -> np.ndarray:
    """What the Hub module returns for one sentence (for tests and docs)."""
    weights = np.arange((len(VOCABULARY) + 1) * EMBEDDING_DIM, dtype=np.float32)
    table = weights.reshape(-1, EMBEDDING_DIM) / 10.0
    index = {w: i for i, w in enumerate(VOCABULARY)}
    ids = [index.get(t, len(VOCABULARY)) for t in sentence.split()]
    if not ids:
        return np.zeros(EMBEDDING_DIM, np.float32)
    return table[ids].mean(axis=0)


def write_all(root: str | Path) -> Path:
    """The bundled example repository, with a models.config; idempotent."""
    root = Path(root).resolve()
    jobs = [
        ("half_plus_two", 1, lambda d: write_half_plus_two(d, 0.5, 2.0)),
        ("half_plus_two", 2, lambda d: write_half_plus_two(d, 0.5, 2.0)),
        ("keras_classifier", 1, write_keras_classifier),
        ("text_embedding", 1, write_text_embedding_hub_module),
    ]
    for name, version, write in jobs:
        target = root / name / str(version)
        if (target / "saved_model.pb").exists():
            continue
        staging = root / name / f".staging-{version}"
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        write(staging)
        staging.rename(target)  # atomic: the server never sees half a version
        print(f"wrote {target}")
    models = sorted({name for name, _v, _w in jobs})
    # half_plus_two shows version policies and labels: both versions served.
    extra = {
        "half_plus_two": "    model_version_policy { all {} }\n"
        '    version_labels { key: "stable" value: 1 }\n'
        '    version_labels { key: "canary" value: 2 }\n'
    }
    entries = "\n".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{root / name}"\n'
        f'    model_platform: "tensorflow"\n{extra.get(name, "")}  }}'
        for name in models
    )
    (root / "models.config").write_text(f"model_config_list {{\n{entries}\n}}\n")
    return root


def main(argv: list[str]) -> int:
    root = write_all(argv[0] if argv else "models")
    print(f"example models under {root}; config: {root / 'models.config'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
