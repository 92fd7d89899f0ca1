"""The REST handler in-process: routing, JSON in and out, HTTP statuses, observation."""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.api.rest.handlers import RestApi
from serving.api.rest.http import Request, Response
from serving.errors import ServingError
from tests.unit.small_service import MODEL, RecordingObserver, small_service


@pytest.fixture
def api():
    observer = RecordingObserver()
    with small_service(observer) as service:
        yield RestApi(service, timeout_s=30.0)


def _handle(api: RestApi, method: str, path: str, body: object = b"") -> tuple[int, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response: Response = asyncio.run(api.handle(Request(method, path, "", {}, raw)))
    body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    return response.status, json.loads(body)


# ------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("method", "path", "api_name", "name", "version", "label", "verb"),
    [
        ("GET", "/v1/models/m", "get_model_status", "m", None, None, "status"),
        ("HEAD", "/v1/models/m", "get_model_status", "m", None, None, "status"),
        ("GET", "/v1/models/m/versions/3", "get_model_status", "m", 3, None, "status"),
        ("GET", "/v1/models/m/labels/stable", "get_model_status", "m", None, "stable", "status"),
        ("GET", "/v1/models/m/metadata", "get_model_metadata", "m", None, None, "metadata"),
        ("GET", "/V1/MODELS/m/VERSIONS/2/METADATA", "get_model_metadata", "m", 2, None, "metadata"),
        ("POST", "/v1/models/m:predict", "predict", "m", None, None, "predict"),
        ("POST", "/v1/models/m:PREDICT", "predict", "m", None, None, "predict"),
        ("POST", "/v1/models/m/versions/7:classify", "classify", "m", 7, None, "classify"),
        ("POST", "/v1/models/m/labels/canary:regress", "regress", "m", None, "canary", "regress"),
        ("POST", "/v1/models/a%20b:predict", "predict", "a b", None, None, "predict"),
    ],
)
def test_routes(api, method, path, api_name, name, version, label, verb) -> None:
    routed, ref, handler = api.route(method, path)
    assert routed == api_name
    assert (ref.name, ref.version, ref.label) == (name, version, label)
    assert handler.__name__ == verb


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/v1/models", "Missing model name in request."),
        ("GET", "/v1/models/", "Malformed request: GET /v1/models/"),
        ("POST", "/v1/models/m:explain", "Malformed request: POST /v1/models/m:explain"),
        ("POST", "/v1/models/m", "Malformed request: POST /v1/models/m"),
        ("PUT", "/v1/models/m:predict", "Malformed request: PUT /v1/models/m:predict"),
        ("GET", "/v1/models/m/versions/x", "Malformed request: GET /v1/models/m/versions/x"),
        (
            "GET",
            "/v1/models/m/versions/99999999999999999999",
            "Failed to convert version: 99999999999999999999 to numeric.",
        ),
    ],
)
def test_unroutable_paths_are_invalid_argument(api, method, path, message) -> None:
    with pytest.raises(ServingError) as err:
        api.route(method, path)
    assert (err.value.http_status, err.value.message) == (400, message)
    # ...and handle() answers them as TF Serving does, without counting a request.
    assert _handle(api, method, path) == (400, {"error": message})
    assert api.service.observer.finished == []


# ------------------------------------------------------------------ handling


def test_predict_row_and_columnar(api) -> None:
    path = f"/v1/models/{MODEL}:predict"
    assert _handle(api, "POST", path, {"instances": [[1.0], [2.0]]}) == (
        200,
        {"predictions": [[2.5], [3.0]]},
    )
    assert _handle(api, "POST", path, {"inputs": {"x": [[4.0]]}}) == (200, {"outputs": [[4.0]]})
    assert api.service.observer.finished == [("predict", "rest", MODEL, "OK")] * 2


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (":predict", b"", 400, "JSON Parse error: The document is empty"),
        (":predict", {"instances": [[1.0]], "inputs": [[1.0]]}, 400, None),
        (
            ":predict",
            {"signature_name": "nope", "instances": [[1.0]]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (":predict", {"instances": [["a"]]}, 400, None),
        (
            "/versions/9:predict",
            {"instances": [[1.0]]},
            404,
            f"Servable not found for request: Specific({MODEL}, 9)",
        ),
        (
            ":classify",
            {"examples": [{"x": 1.0}]},
            400,
            "No classification inputs found in SignatureDef: serving_default",
        ),
    ],
)
def test_errors_map_canonical_codes_to_http(api, path, body, status, message) -> None:
    code, answer = _handle(api, "POST", f"/v1/models/{MODEL}{path}", body)
    assert code == status and set(answer) == {"error"}
    if message is not None:
        assert answer["error"] == message
    ((_api, protocol, model, canonical),) = api.service.observer.finished
    assert (protocol, model) == ("rest", MODEL)
    assert canonical == {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}[status]


def test_classify_and_regress(api) -> None:
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    status, body = _handle(api, "POST", f"/v1/models/{MODEL}:classify", classify)
    assert (status, body) == (200, {"results": [[["", 2.5]], [["", 3.0]]]})
    regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 4.0}]}
    assert _handle(api, "POST", f"/v1/models/{MODEL}:regress", regress) == (
        200,
        {"results": [4.0]},
    )


def test_status_and_metadata_bodies(api) -> None:
    status, body = _handle(api, "GET", f"/v1/models/{MODEL}")
    assert status == 200
    assert body == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    status, body = _handle(api, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert _handle(api, "GET", "/v1/models/other") == (
        404,
        {"error": "Could not find any versions of model other"},
    )
    assert [f[0] for f in api.service.observer.finished] == [
        "get_model_status",
        "get_model_metadata",
        "get_model_status",
    ]


class SlowRunner:
    async def run(self, servable, signature, inputs, outputs):
        await asyncio.sleep(5)


def test_the_time_limit_is_504_deadline_exceeded(api) -> None:
    api.service.runner = SlowRunner()
    api.timeout_s = 0.02
    status, body = _handle(api, "POST", f"/v1/models/{MODEL}:predict", {"instances": [[1.0]]})
    assert (status, body) == (504, {"error": "Deadline Exceeded"})
    assert api.service.observer.finished == [("predict", "rest", MODEL, "DEADLINE_EXCEEDED")]


class BrokenRunner:
    async def run(self, servable, signature, inputs, outputs):
        raise RuntimeError("the model fell over")


def test_an_unexpected_failure_is_500_with_its_type(api) -> None:
    api.service.runner = BrokenRunner()
    status, body = _handle(api, "POST", f"/v1/models/{MODEL}:predict", {"instances": [[1.0]]})
    assert (status, body) == (500, {"error": "RuntimeError: the model fell over"})
    assert api.service.observer.finished == [("predict", "rest", MODEL, "INTERNAL")]


def test_a_draining_server_refuses_with_503(api) -> None:
    api.service.observer.draining = True
    status, body = _handle(api, "GET", f"/v1/models/{MODEL}")
    assert (status, body) == (503, {"error": "Server is shutting down"})


def test_max_tensor_elements_bounds_rest_tensors_on_both_paths() -> None:
    path = f"/v1/models/{MODEL}:predict"
    with small_service(RecordingObserver()) as service:
        for count in (11, 300_000):  # the event-loop path and the large-body path
            body = json.dumps({"instances": [[float(i % 10)] for i in range(count)]}).encode()
            api = RestApi(service, timeout_s=30.0, max_elements=count - 1)
            assert _handle(api, "POST", path, body) == (
                400,
                {
                    "error": f"tensor parsing error: x (shape [{count}, 1] has {count} "
                    f"elements, more than the limit of {count - 1} (--max_tensor_elements))"
                },
            )
            code, answer = _handle(RestApi(service, max_elements=count), "POST", path, body)
            assert code == 200 and len(answer["predictions"]) == count  # type: ignore[arg-type]
