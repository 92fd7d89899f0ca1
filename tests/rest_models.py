"""A TF1 SavedModel with one input per JSON-relevant dtype, for the REST tests."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

v1 = tf.compat.v1


def _info(tensor):
    return v1.saved_model.utils.build_tensor_info(tensor)


def write_multi_dtype_model(export_dir: Path) -> Path:
    """Signatures:

    - `serving_default`: inputs a float[-1,2], b int32[-1], c string[-1], flag bool[-1],
      d double[-1], h half[-1]; outputs sum=2a, b_plus=b+1, b_64=int64(b)*3e9,
      c_bytes=c, c_text=c, not_flag=!flag, d_half=d/2, h_twice=2h.
    - `echo`: x float[-1] → y=x (NaN and infinities pass through).
    - `total`: x float[-1] → total=sum(x), a scalar (no batch dimension).
    - `bytes_echo`: c string[-1] → c_bytes=c.
    - `small_ints`: u uint8[-1], s int8[-1] → u_out=int32(u), s_out=int32(s).
    """
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        a = v1.placeholder(tf.float32, [None, 2], name="a")
        b = v1.placeholder(tf.int32, [None], name="b")
        c = v1.placeholder(tf.string, [None], name="c")
        flag = v1.placeholder(tf.bool, [None], name="flag")
        d = v1.placeholder(tf.float64, [None], name="d")
        h = v1.placeholder(tf.float16, [None], name="h")
        x = v1.placeholder(tf.float32, [None], name="x")
        u = v1.placeholder(tf.uint8, [None], name="u")
        s = v1.placeholder(tf.int8, [None], name="s")
        build = v1.saved_model.signature_def_utils.build_signature_def
        predict = v1.saved_model.signature_constants.PREDICT_METHOD_NAME
        main = {
            "sum": a * 2.0,
            "b_plus": b + 1,
            "b_64": tf.cast(b, tf.int64) * 3_000_000_000,
            "c_bytes": tf.identity(c),
            "c_text": tf.identity(c),
            "not_flag": tf.logical_not(flag),
            "d_half": d / 2.0,
            "h_twice": h * 2.0,
        }
        signatures = {
            "serving_default": build(
                {k: _info(t) for k, t in dict(a=a, b=b, c=c, flag=flag, d=d, h=h).items()},
                {k: _info(t) for k, t in main.items()},
                predict,
            ),
            "echo": build({"x": _info(x)}, {"y": _info(tf.identity(x))}, predict),
            "total": build({"x": _info(x)}, {"total": _info(tf.reduce_sum(x))}, predict),
            "bytes_echo": build({"c": _info(c)}, {"c_bytes": _info(tf.identity(c))}, predict),
            "small_ints": build(
                {"u": _info(u), "s": _info(s)},
                {"u_out": _info(tf.cast(u, tf.int32)), "s_out": _info(tf.cast(s, tf.int32))},
                predict,
            ),
        }
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
        )
        builder.save()
    return export_dir
