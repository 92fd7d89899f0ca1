"""TF Serving's REST API end to end: the real server process, plain HTTP clients.

Expected bodies come from TF Serving's documentation, its handler tests
(http_rest_api_handler_test.cc) and test data, and /work/notes/tfs_facts.md
§6 (e.g. the status body, the error layout), not from our own output.
"""

from __future__ import annotations

import base64
import http.client as httpclient
import json
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import requests

from serving import examples
from tests.conftest import install
from tests.harness import ServerProcess, free_port, output, wait_for
from tests.rest_models import write_multi_dtype_model

pytestmark = pytest.mark.slow

OPENAPI = Path(__file__).resolve().parents[2] / "serving" / "api" / "rest" / "openapi.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory, testdata: Path, model_store: Path):
    root = tmp_path_factory.mktemp("rest_models")
    (root / "hp").mkdir()
    for version, kind in enumerate(["hp2_a", "hp2_b", "hp2_c"], start=1):
        install(model_store, kind, root / "hp" / str(version))
    (root / "hub").mkdir()
    install(model_store, "hub_text", root / "hub" / "1")
    write_multi_dtype_model(root / "multi" / "1")
    shutil.copytree(testdata / "tf_serving" / "saved_model_counter", root / "counter")
    tfs = testdata / "tf_serving"
    config = root / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{ name: "default" base_path: "{tfs / "saved_model_half_plus_two_cpu"}"
           model_platform: "tensorflow" }}
  config {{ name: "hp" base_path: "{root / "hp"}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 1 }}
           version_labels {{ key: "canary" value: 3 }} }}
  config {{ name: "hub" base_path: "{root / "hub"}" model_platform: "tensorflow" }}
  config {{ name: "multi" base_path: "{root / "multi"}" model_platform: "tensorflow" }}
  config {{ name: "counter" base_path: "{root / "counter"}" model_platform: "tensorflow" }}
}}
""")
    log_dir = tmp_path_factory.mktemp("rest_logs")
    proc = ServerProcess(
        f"--model_config_file={config}", "--max_request_bytes=8000000", log_dir=log_dir
    )
    with proc.running("default", "hub", "multi", "counter", versions={"hp": {1, 2, 3}}):
        yield proc


@pytest.fixture(scope="module")
def http(server: ServerProcess):
    with requests.Session() as session:
        yield session


def post(http, server, path: str, body) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return http.post(server.rest_url + path, data=data, timeout=30)


def ok(response: requests.Response):
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    return json.loads(response.text)


def error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    # TF Serving's layout: rapidjson PrettyWriter, 4-space indent, no trailing newline.
    assert response.text.startswith('{\n    "error": "') and response.text.endswith('"\n}')
    return json.loads(response.text)["error"]


# ------------------------------------------------------------------ predict


def test_predict_row_format_exact_bytes(http, server) -> None:
    # TF Serving's documented example (tutorial "TensorFlow Serving with Docker").
    response = post(http, server, "/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.text == '{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'
    response = post(http, server, "/v1/models/default:predict", {"instances": [[1.0], [2.0]]})
    assert response.text == '{\n    "predictions": [[2.5], [3.0]\n    ]\n}'


def test_predict_handler_test_cases(http, server) -> None:
    # http_rest_api_handler_test.cc: Predict.
    url = "/v1/models/default/versions/123:predict"
    assert ok(post(http, server, url, {"instances": [1.0, 2.0]})) == {"predictions": [2.5, 3.0]}
    body = {"signature_name": "serving_default", "instances": [3.0, 4.0]}
    assert ok(post(http, server, url, body)) == {"predictions": [3.5, 4.0]}
    body = {"signature_name": "serving_default", "inputs": [3.0, 4.0]}
    assert ok(post(http, server, url, body)) == {"outputs": [3.5, 4.0]}


def test_predict_columnar_layout(http, server) -> None:
    response = post(http, server, "/v1/models/default:predict", {"inputs": [[1.0], [2.0]]})
    # PrettyWriter in its default (multi-line) array mode.
    assert response.text == (
        '{\n    "outputs": [\n        [\n            2.5\n        ],\n'
        "        [\n            3.0\n        ]\n    ]\n}"
    )
    body = {"inputs": {"x": [[1.0]]}}  # an object naming the single input also works
    assert ok(post(http, server, "/v1/models/default:predict", body)) == {"outputs": [[2.5]]}


def test_predict_ints_accepted_for_float_and_float_format(http, server) -> None:
    body = {"signature_name": "echo", "instances": [1, 0.1, 9000000, 1234567, 0.00001, 1 / 3]}
    response = post(http, server, "/v1/models/multi:predict", body)
    # absl::StrCat (6 digits), %.9g when that does not round-trip, ".0" when integral.
    assert response.text == (
        '{\n    "predictions": [1.0, 0.1, 9e+06, 1234567.0, 1e-05, 0.333333343\n    ]\n}'
    )


def test_predict_nan_and_infinity_bare_tokens(http, server) -> None:
    body = b'{"signature_name": "echo", "inputs": [NaN, Infinity, -Infinity, 1.5]}'
    response = post(http, server, "/v1/models/multi:predict", body)
    assert response.status_code == 200
    assert "NaN" in response.text and "-Infinity" in response.text
    values = json.loads(response.text)["outputs"]  # Python's json accepts the bare tokens
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 1.5]


def test_predict_several_inputs_and_outputs_row(http, server) -> None:
    b64 = base64.b64encode("é\x00".encode()).decode()
    body = {
        "instances": [
            {"a": [1.0, 2.0], "b": 1, "c": {"b64": b64}, "flag": True, "d": 1.0, "h": 0.5},
            {"a": [3.0, 4.5], "b": -7, "c": "text é", "flag": False, "d": 3.0, "h": 1.5},
        ]
    }
    response = post(http, server, "/v1/models/multi:predict", body)
    assert ok(response) == {
        "predictions": [
            {
                "b_64": 3000000000,
                "b_plus": 2,
                "c_bytes": {"b64": b64},
                "c_text": "é\x00",
                "d_half": 0.5,
                "h_twice": 1.0,
                "not_flag": False,
                "sum": [2.0, 4.0],
            },
            {
                "b_64": -21000000000,
                "b_plus": -6,
                "c_bytes": {"b64": base64.b64encode("text é".encode()).decode()},
                "c_text": "text é",
                "d_half": 1.5,
                "h_twice": 3.0,
                "not_flag": True,
                "sum": [6.0, 9.0],
            },
        ]
    }
    # UTF-8 is written as is; control characters as rapidjson escapes them.
    assert '"c_text": "é\\u0000"' in response.text


def test_predict_raw_bytes_pass_through(http, server) -> None:
    # TF Serving writes a non-_bytes string output's bytes unchanged (no UTF-8 check).
    body = {
        "inputs": {
            "a": [[1.0, 2.0]],
            "b": [1],
            "c": [{"b64": base64.b64encode(b"\xff").decode()}],
            "flag": [True],
            "d": [1.0],
            "h": [1.0],
        }
    }
    response = post(http, server, "/v1/models/multi:predict", body)
    assert response.status_code == 200
    assert b'"c_text": [\n            "\xff"\n        ]' in response.content


def test_predict_several_inputs_and_outputs_columnar(http, server) -> None:
    body = {
        "inputs": {
            "a": [[1.0, 2.0]],
            "b": [5],
            "c": ["x"],
            "flag": [False],
            "d": [0.25],
            "h": [2.0],
            "ignored": "extra keys are ignored",
        }
    }
    got = ok(post(http, server, "/v1/models/multi:predict", body))
    assert got == {
        "outputs": {
            "b_64": [15000000000],
            "b_plus": [6],
            "c_bytes": [{"b64": "eA=="}],
            "c_text": ["x"],
            "d_half": [0.125],
            "h_twice": [4.0],
            "not_flag": [True],
            "sum": [[2.0, 4.0]],
        }
    }


def test_predict_b64_single_output_layout(http, server) -> None:
    body = {"signature_name": "bytes_echo", "instances": [{"b64": "AAE="}]}
    response = post(http, server, "/v1/models/multi:predict", body)
    # A PrettyWriter object is multi-line even inside a single-line array; its
    # indent counts every open container (root, predictions, the object).
    assert response.text == (
        '{\n    "predictions": [{\n            "b64": "AAE="\n        }\n    ]\n}'
    )


def test_predict_small_ints_narrow_like_tf_serving(http, server) -> None:
    body = {"signature_name": "small_ints", "inputs": {"u": [1, 255, 300], "s": [-1, 127, 128]}}
    got = ok(post(http, server, "/v1/models/multi:predict", body))
    assert got == {"outputs": {"s_out": [-1, 127, -128], "u_out": [1, 255, 44]}}


def test_predict_hub_module_multi_output(http, server) -> None:
    sentences = ["hello world", "a"]
    body = {"signature_name": "tokens", "instances": sentences}
    got = ok(post(http, server, "/v1/models/hub:predict", body))["predictions"]
    assert [row["token_count"] for row in got] == [2, 1]
    for row, sentence in zip(got, sentences, strict=True):
        np.testing.assert_allclose(row["embedding"], examples.reference_embedding(sentence))
    columnar = ok(
        post(
            http,
            server,
            "/v1/models/hub:predict",
            {"signature_name": "tokens", "inputs": sentences},
        )
    )
    assert columnar["outputs"]["token_count"] == [2, 1]
    default = ok(
        post(
            http,
            server,
            "/v1/models/hub:predict",
            {"signature_name": "default", "instances": ["hello"]},
        )
    )
    np.testing.assert_allclose(default["predictions"][0], examples.reference_embedding("hello"))


def test_counter_stateful_signature_by_name(http, server) -> None:
    url = "/v1/models/counter:predict"
    body = {"signature_name": "incr_counter_by", "inputs": {"delta": 3}}
    first = ok(post(http, server, url, body))["outputs"]
    second = ok(post(http, server, url, body))["outputs"]
    assert second == first + 3.0
    # TF Serving's REST predict needs an input map.
    message = error(post(http, server, url, {"signature_name": "get_counter", "inputs": {}}), 400)
    assert message == "Failed to get input map for signature: get_counter"


def test_scalar_output_in_row_format(http, server) -> None:
    body = {"signature_name": "total", "instances": [1.0, 2.0]}
    message = error(post(http, server, "/v1/models/multi:predict", body), 400)
    assert message == "Tensor name: total has no shape information "
    body = {"signature_name": "total", "inputs": [1.0, 2.0]}
    assert post(http, server, "/v1/models/multi:predict", body).text == ('{\n    "outputs": 3.0\n}')


def test_large_predict_round_trip(http, server) -> None:
    x = np.random.default_rng(0).standard_normal((1000, 1)).astype(np.float32)
    got = ok(post(http, server, "/v1/models/default:predict", {"instances": x.tolist()}))
    np.testing.assert_allclose(np.array(got["predictions"], np.float32), 0.5 * x + 2, rtol=1e-6)


# -------------------------------------------------------- classify / regress


def test_regress_and_classify_handler_test_cases(http, server) -> None:
    # http_rest_api_handler_test.cc: Regress → [42], Classify → [["", 12]] / [["", 7]].
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    response = post(http, server, "/v1/models/default:regress", body)
    assert ok(response) == {"results": [42]}
    assert response.text == '{\n    "results": [42.0]\n}'
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
    assert ok(post(http, server, "/v1/models/default:classify", body)) == {"results": [[["", 12]]]}
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}, {"x": 20.0}]}
    response = post(http, server, "/v1/models/default/versions/123:classify", body)
    assert response.text == '{\n    "results": [[["", 7.0]], [["", 12.0]]\n    ]\n}'


def test_regress_with_context_and_feature_kinds(http, server) -> None:
    # Context features merge into every example; the example's own value wins.
    body = {
        "signature_name": "regress_x_to_y",
        "context": {"x": 4.0},
        "examples": [{}, {"x": [2.0]}],
    }
    assert ok(post(http, server, "/v1/models/default:regress", body)) == {"results": [4.0, 3.0]}
    body = {"signature_name": "regress_x2_to_y3", "examples": [{"x2": 1.0}]}
    message = error(post(http, server, "/v1/models/default:regress", body), 400)
    assert message == "Expected input Tensor of DT_STRING (serialized tf.Examples). Got: DT_FLOAT"
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": [1, 2]}]}  # int64_list
    assert error(post(http, server, "/v1/models/default:regress", body), 400)


# ------------------------------------------------------------ status/metadata


def test_status_exact_bytes(http, server) -> None:
    response = http.get(server.rest_url + "/v1/models/default", timeout=10)
    assert response.status_code == 200
    assert response.text == (
        '{\n "model_version_status": [\n  {\n   "version": "123",\n   "state": "AVAILABLE",\n'
        '   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
    )
    one = ok(http.get(server.rest_url + "/v1/models/hp/versions/2", timeout=10))
    assert [s["version"] for s in one["model_version_status"]] == ["2"]
    # Labels are ignored by GetModelStatus: all versions, newest first.
    every = ok(http.get(server.rest_url + "/v1/models/hp/labels/stable", timeout=10))
    assert [s["version"] for s in every["model_version_status"]] == ["3", "2", "1"]


def test_metadata_equals_tf_serving_test_data(http, server, testdata: Path) -> None:
    expected = json.loads(
        (testdata / "tf_serving" / "half_plus_two_model_metadata.json").read_text()
    )
    response = http.get(server.rest_url + "/v1/models/default/metadata", timeout=10)
    assert ok(response) == expected
    assert response.text.startswith('{\n"model_spec":{\n "name": "default",\n')
    labelled = ok(http.get(server.rest_url + "/v1/models/hp/labels/canary/metadata", timeout=10))
    assert labelled["model_spec"] == {"name": "hp", "signature_name": "", "version": "3"}
    versioned = ok(http.get(server.rest_url + "/v1/models/hp/versions/2/metadata", timeout=10))
    assert versioned["model_spec"]["version"] == "2"


# --------------------------------------------------- versions and labels


@pytest.mark.parametrize(
    ("segment", "y"),
    [
        ("", 4.5),
        ("/versions/1", 2.5),
        ("/versions/2", 3.5),
        ("/labels/stable", 2.5),
        ("/labels/canary", 4.5),
    ],
)
def test_version_and_label_segments_on_every_verb(http, server, segment, y) -> None:
    base = f"/v1/models/hp{segment}"
    assert ok(post(http, server, base + ":predict", {"instances": [1.0]})) == {"predictions": [y]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}
    assert ok(post(http, server, base + ":regress", body)) == {"results": [y]}
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}
    assert ok(post(http, server, base + ":classify", body)) == {"results": [[["", y]]]}
    ok(http.get(server.rest_url + base, timeout=10))
    meta = ok(http.get(server.rest_url + base + "/metadata", timeout=10))
    assert meta["model_spec"]["version"] == str(int((y - 2.5) + 1))


def test_unknown_version_and_label(http, server) -> None:
    bodies = {
        "predict": {"instances": [1.0]},
        "regress": {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]},
        "classify": {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]},
    }
    for verb, body in bodies.items():
        message = error(post(http, server, f"/v1/models/hp/versions/9:{verb}", body), 404)
        assert message == "Servable not found for request: Specific(hp, 9)"
        message = error(post(http, server, f"/v1/models/hp/labels/nope:{verb}", body), 400)
        assert message == "Unrecognized servable version label: nope"
    message = error(http.get(server.rest_url + "/v1/models/hp/versions/9", timeout=10), 404)
    assert message == "Could not find version 9 of model hp"
    message = error(http.get(server.rest_url + "/v1/models/hp/labels/nope/metadata"), 400)
    assert message == "Unrecognized servable version label: nope"


# ------------------------------------------------------------------- errors


PREDICT = "/v1/models/default:predict"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "JSON Parse error: The document is empty"),
        (b"instances = [1, 2]", 400, "JSON Parse error: Invalid value. at offset: 0"),
        (
            b'{"instances": [1.0, 2.0}',
            400,
            "JSON Parse error: Missing a comma or ']' after an array element. at offset: 23",
        ),
        (b"[1.0]", 400, "JSON Value: [\n    1.0\n] Is not object"),
        (
            b'{"instances": [1.0], "inputs": [1.0]}',
            400,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        ),
        (b'{"instances": 1.0}', 400, "Excepting 'instances' to be an list/array"),
        (b'{"instances": []}', 400, "No values in 'instances' array"),
        (b'{"foo": 1}', 400, "Missing 'inputs' or 'instances' key"),
        (
            b'{"signature_name": 5, "instances": [1.0]}',
            400,
            "not formatted correctly. 'signature_name' key must be a string value.",
        ),
        (
            b'{"signature_name": "nope", "instances": [1.0]}',
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            b'{"instances": ["a"]}',
            400,
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        (b'{"instances": [true]}', 400, "Type: True is not of expected type: float"),
        (b'{"instances": [null]}', 400, "Type: Null is not of expected type: float"),
        (
            b'{"instances": [[1.0], [2.0, 3.0]]}',
            400,
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting tensor size: 1 but got: 2",
        ),
        (
            b'{"inputs": [[1.0], [2.0, 3.0]]}',
            400,
            "Encountered list at unexpected size: 2 at level: 1 expected size: 1",
        ),
        (
            b'{"inputs": [[1.0], 2.0]}',
            400,
            "JSON Value: 2.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        (
            b'{"inputs": [16777217]}',
            400,
            "Cannot convert JSON value: 16777217 to float without loss of precision.",
        ),
        (b'{"inputs": {"y": [1.0]}}', 400, "Missing named input: x in 'inputs' object."),
        (
            b'{"instances": [{"x": 1.0, "z": 2.0}]}',
            400,
            "JSON object: does not have named input: z",
        ),
        (b'{"instances": [{"b64": "%%%"}]}', 400, "Type: Object is not of expected type: float"),
    ],
)
def test_predict_errors(http, server, body, status, message) -> None:
    got = error(post(http, server, PREDICT, body), status)
    assert message in got


def test_multi_input_errors(http, server) -> None:
    url = "/v1/models/multi:predict"
    message = error(post(http, server, url, {"instances": [[1.0, 2.0]]}), 400)
    assert message == (
        "instances is a plain list, but expecting list of objects as multiple input tensors "
        "required as per tensorinfo_map"
    )
    message = error(post(http, server, url, {"inputs": [1.0]}), 400)
    assert message.startswith("inputs is a plain value/list, but expecting an object")
    row = {"a": [1.0, 2.0], "b": 1, "c": "x", "flag": True, "d": 1.0}
    message = error(post(http, server, url, {"instances": [row]}), 400)
    assert message.startswith("Failed to process element: 0 of 'instances' list. JSON object: {")
    assert message.endswith("keys must be equal to: a,b,c,d,flag,h")
    message = error(post(http, server, url, {"instances": [{**row, "h": 1.0}, [1.0]]}), 400)
    assert message == "Expecting object but got list at item 1 of input list"
    body = {"signature_name": "bytes_echo", "instances": [{"b64": "!!"}]}
    message = error(post(http, server, "/v1/models/multi:predict", body), 400)
    assert message.endswith("Unable to base64 decode")
    body = {"signature_name": "bytes_echo", "inputs": [{"b64": "AA==", "x": 1}]}
    message = error(post(http, server, "/v1/models/multi:predict", body), 400)
    assert message.endswith("not formatted correctly for base64 data")
    body = {"inputs": {**{k: [v] for k, v in row.items()}, "b": [1.5], "h": [1.0]}}
    message = error(post(http, server, url, body), 400)
    assert message == "JSON Value: 1.5 Type: Number is not of expected type: int32"


def test_classify_regress_errors(http, server) -> None:
    url = "/v1/models/default:classify"
    message = error(post(http, server, url, {"signature_name": "classify_x_to_y"}), 400)
    assert message.endswith("When method is classify, key 'examples' is expected and was not found")
    message = error(post(http, server, "/v1/models/default:regress", {"examples": 1}), 400)
    assert message.endswith("Expecting 'examples' value to be an list/array")
    message = error(post(http, server, url, {"examples": []}), 400)
    assert message.endswith("'examples' value is an empty array")
    message = error(post(http, server, url, {"examples": [1]}), 400)
    assert message == "Example must be JSON object but got JSON Number"
    message = error(post(http, server, url, {"examples": [{"x": [1.0, "a"]}]}), 400)
    assert message == "Unexpected element type in feature: x expecting type: float"
    message = error(post(http, server, url, {"examples": [{"x": None}]}), 400)
    assert message == "Feature: x has element with unexpected JSON type: Null"
    message = error(post(http, server, url, {"examples": [{"x": 2**64 - 1}]}), 400)
    assert message == "Feature: x has uint64 element. Only int64 is supported."
    body = {"signature_name": "nope", "examples": [{"x": 1.0}]}
    assert error(post(http, server, url, body), 400) == "No signature was found with the name: nope"


def test_unknown_model_and_paths(http, server) -> None:
    message = error(post(http, server, "/v1/models/nope:predict", {"instances": [1.0]}), 404)
    assert message == "Servable not found for request: Latest(nope)"
    message = error(http.get(server.rest_url + "/v1/models/nope", timeout=10), 404)
    assert message == "Could not find any versions of model nope"
    message = error(http.get(server.rest_url + "/v1/models/nope/metadata", timeout=10), 404)
    assert message == "Servable not found for request: Latest(nope)"
    assert error(http.get(server.rest_url + "/v1/models", timeout=10), 400) == (
        "Missing model name in request."
    )
    for method, path in [
        ("GET", "/v1/foo"),
        ("POST", "/v1/models"),
        ("GET", "/v1/models/x:predict"),
        ("POST", "/v1/models/x/version/1:predict"),
        ("POST", "/v1/models/x/versions/HELLO:regress"),
        ("PUT", "/v1/models/x"),
    ]:
        response = http.request(method, server.rest_url + path, timeout=10)
        assert error(response, 400) == f"Malformed request: {method} {path}"
    big = "/v1/models/x/versions/18446744073709551615:regress"
    assert error(post(http, server, big, {}), 400) == (
        "Failed to convert version: 18446744073709551615 to numeric."
    )
    assert error(http.get(server.rest_url + "/index.html", timeout=10), 404).startswith("Not found")
    # The model name is URL-decoded.
    response = post(http, server, "/v1/models/%64efault:predict", {"instances": [1.0]})
    assert ok(response) == {"predictions": [2.5]}


def test_oversized_body_gets_413_and_server_keeps_serving(http, server) -> None:
    payload = b'{"instances": [' + b"1.0, " * 2_000_000 + b"1.0]}"
    response = requests.post(server.rest_url + PREDICT, data=payload, timeout=30)
    assert response.status_code == 413
    assert "8000000 bytes" in response.json()["error"]
    assert "--max_request_bytes" in response.json()["error"]
    assert ok(post(http, server, PREDICT, {"instances": [1.0]})) == {"predictions": [2.5]}


# ---------------------------------------------------------------- HTTP/1.1


def test_keep_alive_pipelining_and_chunked(server) -> None:
    conn = httpclient.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    for value in (1.0, 3.0):
        conn.request("POST", PREDICT, body=json.dumps({"instances": [value]}))
        response = conn.getresponse()
        assert json.loads(response.read()) == {"predictions": [0.5 * value + 2]}
        assert response.getheader("Connection") is None  # kept alive
    # Chunked request body.
    chunks = iter([b'{"instances"', b": [5.0]}"])
    conn.request(
        "POST", PREDICT, body=chunks, encode_chunked=True, headers={"Transfer-Encoding": "chunked"}
    )
    assert json.loads(conn.getresponse().read()) == {"predictions": [4.5]}
    conn.close()

    # Three pipelined requests in one write: three answers, in order.
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        requests_ = b""
        for value in (1.0, 2.0, 3.0):
            body = json.dumps({"instances": [value]}).encode()
            requests_ += (
                f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        requests_ += b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(requests_)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 4
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert [json.loads(b) for b in bodies[:3]] == [{"predictions": [v]} for v in (2.5, 3.0, 3.5)]
    assert b"\r\nconnection: close\r\n" in data.lower()  # header names are case-insensitive


def test_malformed_http_gets_400_and_server_keeps_serving(http, server) -> None:
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(b"BLAH\x00 / HTTP/1.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    assert ok(post(http, server, PREDICT, {"instances": [1.0]})) == {"predictions": [2.5]}


# ------------------------------------------------------------------ OpenAPI


def _validator(schema_name: str):
    from openapi_schema_validator import OAS31Validator

    doc = json.loads(OPENAPI.read_text())
    return OAS31Validator({**doc, "$ref": f"#/components/schemas/{schema_name}"})


def test_openapi_document_is_valid_and_served(http, server) -> None:
    from openapi_spec_validator import validate

    served = ok(http.get(server.rest_url + "/v1/openapi.json", timeout=10))
    assert served == json.loads(OPENAPI.read_text())
    validate(served)
    for path in (
        "/v1/models/{name}/labels/{label}:predict",
        "/v1/models/{name}/versions/{version}",
        "/v1/models/{name}/metadata",
        "/v1/models/{name}:classify",
    ):
        assert path in served["paths"]


def test_real_responses_match_openapi(http, server) -> None:
    checks = [
        ("PredictRequest", {"instances": [1.0]}),
        ("PredictRequest", {"inputs": {"x": [1.0]}}),
        ("PredictResponse", ok(post(http, server, PREDICT, {"instances": [1.0]}))),
        ("PredictResponse", ok(post(http, server, PREDICT, {"inputs": [[1.0]]}))),
        (
            "PredictResponse",
            ok(
                post(
                    http,
                    server,
                    "/v1/models/hub:predict",
                    {"signature_name": "tokens", "instances": ["a b"]},
                )
            ),
        ),
        (
            "ClassifyResponse",
            ok(
                post(
                    http,
                    server,
                    "/v1/models/default:classify",
                    {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]},
                )
            ),
        ),
        ("RegressRequest", {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}),
        (
            "RegressResponse",
            ok(
                post(
                    http,
                    server,
                    "/v1/models/default:regress",
                    {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]},
                )
            ),
        ),
        ("ModelStatusResponse", ok(http.get(server.rest_url + "/v1/models/hp", timeout=10))),
        ("ModelMetadataResponse", ok(http.get(server.rest_url + "/v1/models/default/metadata"))),
        ("ModelMetadataResponse", ok(http.get(server.rest_url + "/v1/models/multi/metadata"))),
        ("Error", json.loads(post(http, server, PREDICT, b"").text)),
        ("Error", json.loads(http.get(server.rest_url + "/v1/models/nope").text)),
    ]
    for schema, instance in checks:
        _validator(schema).validate(instance)
    with pytest.raises(Exception):  # noqa: B017 - the validator must reject wrong bodies
        _validator("ModelStatusResponse").validate({"model_version_status": [{"version": 1}]})


# ------------------------------------------- timeout, CORS, limits (own server)


def test_timeout_cors_and_small_limit(tmp_path, testdata: Path) -> None:
    model = testdata / "tf_serving" / "saved_model_half_plus_two_cpu"
    proc = ServerProcess(
        "--model_name=default",
        f"--model_base_path={model}",
        "--rest_api_timeout_in_ms=1",
        "--rest_api_enable_cors_support",
        "--max_request_bytes=100000",
        "--rest_api_num_threads=3",
        log_dir=tmp_path,
        rest_port=free_port(),
    )
    with proc.running("default"):
        wait_for(
            lambda: requests.get(proc.rest_url + "/nothing", timeout=5).status_code == 404,
            30,
            "REST port",
        )
        response = requests.get(proc.rest_url + "/nothing", timeout=5)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == "POST, GET"
        assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"
        payload = json.dumps({"instances": [[1.0]] * 5000})
        response = requests.post(proc.rest_url + PREDICT, data=payload, timeout=10)
        assert response.status_code == 504, response.text
        assert response.json() == {"error": "Deadline Exceeded"}
        response = requests.post(proc.rest_url + PREDICT, data=b"[" * 200_000, timeout=10)
        assert response.status_code == 413
        assert "100000 bytes" in response.json()["error"]
        # Still serving, over gRPC too.
        reply = proc.predict("default", {"x": np.array([[1.0]], np.float32)})
        assert output(reply, "y").tolist() == [[2.5]]
