"""REST JSON codec speed: predict on a 1000x100 float32 input, ours vs `json` + lists.

    python -m loadtests.rest_codec [rows] [cols] [repeats]

Both sides do the same work a REST predict does around the model call: parse
the request body into a float32 array, then write `{"predictions": ...}` for
a float32 output of the same shape. Ours: orjson + NumPy decode, TF Serving's
exact layout and float format (serving.api.rest). Baseline: `json.loads` +
`np.array(lists)` and `json.dumps(array.tolist())` (Python's repr floats, not
TF Serving's format). Prints the best of `repeats` runs in milliseconds.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from tensorflow.core.framework import types_pb2

from serving.api.rest import decode, jsonfmt
from serving.servables.signature import TensorSpec


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main(argv: list[str]) -> int:
    rows, cols, repeats = (int(a) for a in (argv + ["1000", "100", "7"][len(argv) :])[:3])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    y = (0.5 * x + 2).astype(np.float32)
    body = json.dumps({"instances": x.tolist()}).encode()
    spec = {"x": TensorSpec("x", "x:0", types_pb2.DT_FLOAT, (-1, cols))}

    def ours_decode():
        doc = decode.parse_json(body)
        return decode.predict_inputs(doc, spec, fast=b"true" not in body)[0]["x"]

    def ours_encode():
        return jsonfmt.predict_row({"y": y})

    def base_decode():
        return np.array(json.loads(body)["instances"], dtype=np.float32)

    def base_encode():
        return json.dumps({"predictions": y.tolist()}).encode()

    assert np.array_equal(ours_decode(), base_decode())
    assert np.allclose(np.array(json.loads(ours_encode())["predictions"]), y)
    results = {
        "ours": (_best(ours_decode, repeats), _best(ours_encode, repeats)),
        "json+lists": (_best(base_decode, repeats), _best(base_encode, repeats)),
    }
    print(f"predict {rows}x{cols} float32, request {len(body) / 1e6:.2f} MB, best of {repeats}")
    for name, (dec, enc) in results.items():
        print(f"  {name:11s} decode {dec:7.1f} ms  encode {enc:7.1f} ms  total {dec + enc:7.1f} ms")
    ours, base = (sum(v) for v in results.values())
    print(f"  speed-up {base / ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
