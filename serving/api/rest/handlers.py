"""TF Serving's `/v1` REST API as a thin adapter over `InferenceService`.

Routing follows TF Serving's regular expressions (case-insensitive, full
match); anything else under /v1 is `Malformed request: <METHOD> <path>` (400).
Each routed request runs inside `service.observe(...)`, the request context
every protocol shares (metrics, the time limit, canonical error codes); what
leaves it is a `ServingError`, mapped to HTTP by `ServingError.http_status`
and written as TF Serving's `{"error": ...}` body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import unquote

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from serving.api.messages import model_spec, signature_def_map, status_response
from serving.api.rest import decode, jsonfmt
from serving.api.rest.http import HttpServer, Request, Response, error_response
from serving.errors import ServingError, invalid_argument
from serving.inference.model_ref import ModelRef
from serving.inference.service import InferenceService
from serving.servables.signature import TensorSpec

PROTOCOL = "rest"

_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_POST = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
_GET = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = (1 << 63) - 1
OPENAPI_PATH = "/v1/openapi.json"

# A verb: (model reference from the path, request body) -> response body.
Verb = Callable[[ModelRef, bytes], Awaitable[bytes]]


def _openapi() -> bytes:
    return resources.files("serving.api.rest").joinpath("openapi.json").read_bytes()


class RestApi:
    """The `/v1/...` handler: routes, decodes JSON, calls the service, encodes JSON.

    `observer` is accepted for the transport's wiring and unused: requests are
    counted by the service's own observer (`service.observe`). `timeout_s`
    (--rest_api_timeout_in_ms) is each request's time limit, enforced there too.
    """

    def __init__(
        self, service: InferenceService, observer: Any = None, timeout_s: float | None = None
    ) -> None:
        self.service = service
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self._openapi: bytes | None = None
        self._verbs: dict[str, Verb] = {
            "predict": self.predict,
            "classify": self.classify,
            "regress": self.regress,
        }

    def mount(self, http: HttpServer) -> None:
        http.add_route("GET", OPENAPI_PATH, self.openapi)
        http.set_prefix_handler("/v1/", self.handle)

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = _openapi()
        return Response(200, self._openapi)

    async def handle(self, request: Request) -> Response:
        """One `/v1` request; a ServingError's canonical code becomes the HTTP status."""
        try:
            api, ref, verb = self.route(request.method, request.path)
            async with self.service.observe(api, PROTOCOL, ref.name, self.timeout_s):
                body = await verb(ref, request.body)
            return Response(200, body)
        except ServingError as exc:
            return error_response(exc.http_status, exc.message)

    # ------------------------------------------------------------------ routing

    def route(self, method: str, path: str) -> tuple[str, ModelRef, Verb]:
        """(api, model reference, verb) for a `/v1` path, or INVALID_ARGUMENT."""
        if method == "POST":
            match = _POST.fullmatch(path)
            if match is not None:
                name, version, label, verb = match.groups()
                verb = verb.lower()
                return verb, _ref(name, version, label), self._verbs[verb]
        elif method in ("GET", "HEAD"):
            match = _GET.fullmatch(path)
            if match is not None:
                name, version, label, metadata = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                ref = _ref(name, version, label)
                if metadata:
                    return "get_model_metadata", ref, self.metadata
                return "get_model_status", ref, self.status
        raise invalid_argument(f"Malformed request: {method} {path}")

    # ------------------------------------------------------------------- verbs

    async def predict(self, ref: ModelRef, body: bytes) -> bytes:
        doc = decode.parse_json(body)
        ref = ModelRef(ref.name, ref.version, ref.label, decode.signature_name(doc))
        fast = b"true" not in body and b"false" not in body
        layout = decode.ROW

        def inputs(specs: Mapping[str, TensorSpec]) -> Mapping[str, np.ndarray]:
            # JSON has no types of its own: decoded against the signature's inputs.
            nonlocal layout
            arrays, layout = decode.predict_inputs(doc, specs, fast)
            return arrays

        result = await self.service.predict(ref, inputs)
        if layout == decode.ROW:
            return jsonfmt.predict_row(result.outputs)
        return jsonfmt.predict_columnar(result.outputs)

    async def classify(self, ref: ModelRef, body: bytes) -> bytes:
        doc = decode.parse_json(body)
        ref = ModelRef(ref.name, ref.version, ref.label, decode.signature_name(doc))
        result = await self.service.classify(ref, decode.examples(doc))
        return jsonfmt.classify_json(result.classes, result.scores)

    async def regress(self, ref: ModelRef, body: bytes) -> bytes:
        doc = decode.parse_json(body)
        ref = ModelRef(ref.name, ref.version, ref.label, decode.signature_name(doc))
        result = await self.service.regress(ref, decode.examples(doc))
        return jsonfmt.regress_json(result.values)

    async def status(self, ref: ModelRef, body: bytes) -> bytes:
        return _proto_json(status_response(self.service.status(ref))).encode()

    async def metadata(self, ref: ModelRef, body: bytes) -> bytes:
        result = self.service.metadata(ref)
        spec = model_spec(result.name, result.version)
        signature_map = signature_def_map(result.signature_defs)
        # TF Serving assembles this body by hand from two JSON prints (http_rest_api_util.cc).
        text = (
            '{\n"model_spec":'
            + _proto_json(spec, names=True)
            + ",\n"
            + '"metadata": {"signature_def": '
            + _proto_json(signature_map, names=True)
            + "}\n}\n"
        )
        return text.encode()


def _ref(name: str, version: str | None, label: str | None) -> ModelRef:
    model = unquote(name)
    number = None
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return ModelRef(model, number, unquote(label) if label is not None else None)


def _ordered(message: Any, data: dict) -> dict:
    """Key order of protobuf's C++ JSON printer: plain fields first, then set oneof members."""
    plain: dict[str, Any] = {}
    oneof: dict[str, Any] = {}
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        field = fields.get(key) or next(
            (f for f in message.DESCRIPTOR.fields if f.json_name == key), None
        )
        target = oneof if field is not None and field.containing_oneof is not None else plain
        if field is not None and field.message_type is not None and isinstance(value, dict):
            if field.message_type.GetOptions().map_entry:
                sub = getattr(message, field.name)
                value = {
                    k: _ordered(sub[k], v)
                    if isinstance(v, dict) and hasattr(sub[k], "DESCRIPTOR")
                    else v
                    for k, v in value.items()
                }
            else:
                value = _ordered(getattr(message, field.name), value)
        elif field is not None and isinstance(value, list) and field.message_type is not None:
            value = [
                _ordered(item, v) if isinstance(v, dict) else v
                for item, v in zip(getattr(message, field.name), value, strict=True)
            ]
        target[key] = value
    return {**plain, **oneof}


def _proto_json(message: Message, names: bool = False) -> str:
    """MessageToJsonString(add_whitespace, always_print_primitive_fields) + trailing newline."""
    data = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=names,
    )
    return json.dumps(_ordered(message, data), indent=1, ensure_ascii=False) + "\n"
