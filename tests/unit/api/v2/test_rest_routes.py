"""V2 REST routing and status codes, in process, over a fake V2 service."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from serving.api.rest.http import Request
from serving.api.v2.rest import V2Rest
from serving.api.v2.service import ModelMetadata, TensorMetadata, model_ref
from serving.errors import ServingError, invalid_argument, not_found
from serving.inference.context import RequestContext


class FakeV2:
    """Knows one model, `m` (versions 1 and 2); records what the routes asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.observed: list[tuple[str, str, str | None]] = []

    def observe(self, api: str, protocol: str, model: str | None, timeout_s=None):
        self.observed.append((api, protocol, model))
        return RequestContext(None, api, protocol, model, timeout_s)  # the real one

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return False

    def model_ready(self, name: str, version: str = "") -> bool:
        return name == "m" and version in ("", "1", "2")

    def server_metadata(self) -> dict:
        return {"name": "model-server", "version": "0", "extensions": []}

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        if name != "m":
            raise not_found(f"no model {name}")
        x = TensorMetadata("x", "FP32", [-1, 1])
        return ModelMetadata("m", ["1", "2"], "tensorflow_savedmodel", [x], [x])

    async def infer(self, name, version, inputs, outputs, parameters):
        self.calls.append(("infer", (name, version, dict(inputs), list(outputs), parameters)))
        if name == "slow":
            await asyncio.sleep(5)
        if name != "m":
            raise not_found("Servable not found")
        model_ref(name, version)  # version parsing as the real service does

        class Result:
            pass

        result = Result()
        result.name, result.version = name, 2
        result.outputs = {"y": inputs["x"] * 2}
        return result

    async def repository_index(self, ready_only: bool = False):
        return []

    async def repository_load(self, name: str, base_path: str | None = None) -> None:
        self.calls.append(("load", (name, base_path)))

    async def repository_unload(self, name: str) -> None:
        raise invalid_argument("read-only")


def call(api: V2Rest, method: str, path: str, body: bytes = b"", headers=None):
    request = Request(method, path, "", headers or {}, body)
    if path in ("/v2", "/v2/health/live", "/v2/health/ready"):
        handler = {
            "/v2": api.server_metadata,
            "/v2/health/live": api.live,
            "/v2/health/ready": api.ready,
        }[path]
    elif path == "/v2/repository/index":
        handler = api.repository_index
    else:
        handler = api.handle
    return asyncio.run(handler(request))


@pytest.fixture
def api():
    fake = FakeV2()
    rest = V2Rest(fake)  # type: ignore[arg-type]
    rest.fake = fake
    return rest


INFER = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3]}]})


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v2", b"", 200),
        ("GET", "/v2/health/live", b"", 200),
        ("GET", "/v2/health/ready", b"", 400),  # the fake is not ready
        ("GET", "/v2/models/m", b"", 200),
        ("GET", "/v2/models/m/versions/1", b"", 200),
        ("GET", "/v2/models/nope", b"", 404),
        ("GET", "/v2/models/m/ready", b"", 200),
        ("GET", "/v2/models/m/versions/7/ready", b"", 400),
        ("POST", "/v2/models/m/infer", INFER, 200),
        ("POST", "/v2/models/m/versions/stable/infer", INFER, 200),
        ("POST", "/v2/models/nope/infer", INFER, 404),
        ("GET", "/v2/models/m/infer", b"", 400),
        ("POST", "/v2/models/m", b"", 400),
        ("POST", "/v2/models/m/infer", b"{", 400),
        ("POST", "/v2/repository/models/m/load", b"", 200),
        ("POST", "/v2/repository/models/m/unload", b"", 400),
        ("POST", "/v2/repository/index", b"", 200),
        ("GET", "/v2/something/else", b"", 404),
    ],
)
def test_routes_and_status(api, method, path, body, status):
    response = call(api, method, path, body)
    assert response.status == status, response.body
    doc = orjson.loads(response.body) if response.body else None
    if status >= 400 and "ready" not in path:
        assert set(doc) == {"error"}


def test_infer_json_and_binary_answers(api):
    response = call(api, "POST", "/v2/models/m/infer", INFER)
    doc = orjson.loads(response.body)
    assert doc["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [6.0]}]
    assert doc["model_version"] == "2"
    assert api.fake.observed[-1] == ("predict", "v2-rest", "m")
    x = np.array([[1.5]], dtype=np.float32)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ],
            "parameters": {"binary_data_output": True, "signature_name": "s"},
        }
    )
    response = call(
        api,
        "POST",
        "/v2/models/m/infer",
        head + x.tobytes(),
        {"inference-header-content-length": str(len(head))},
    )
    length = int(dict(response.headers)["Inference-Header-Content-Length"])
    assert response.content_type == "application/octet-stream"
    assert np.frombuffer(response.body[length:], "<f4").tolist() == [3.0]
    assert api.fake.calls[-1][1][4]["signature_name"] == "s"


def test_load_passes_the_base_path(api):
    body = orjson.dumps({"parameters": {"base_path": "/models/m"}})
    assert call(api, "POST", "/v2/repository/models/m/load", body).status == 200
    assert api.fake.calls[-1] == ("load", ("m", "/models/m"))
    bad = orjson.dumps({"parameters": {"base_path": 3}})
    assert call(api, "POST", "/v2/repository/models/m/load", bad).status == 400


def test_version_strings():
    assert model_ref("m", "3").version == 3
    assert model_ref("m", "canary").label == "canary"
    assert model_ref("m").version is None and model_ref("m").label is None
    with pytest.raises(ServingError, match="Failed to convert version"):
        model_ref("m", "9" * 30)


def test_rest_time_limit_is_the_request_contexts():
    api = V2Rest(FakeV2(), timeout_s=0.05)  # type: ignore[arg-type]
    response = call(api, "POST", "/v2/models/slow/infer", INFER)
    assert response.status == 504
    assert orjson.loads(response.body) == {"error": "Deadline Exceeded"}
