"""TF Serving's `/v1` REST API as a thin adapter over `InferenceService`.

Routing follows TF Serving's regular expressions (case-insensitive, full
match); anything else under /v1 is `Malformed request: <METHOD> <path>` (400).
Errors are `ServingError`s from the shared inference layer, mapped to HTTP by
`ServingError.http_status` and written as TF Serving's `{"error": ...}` body.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.api.rest import decode, jsonfmt
from serving.api.rest.http import HttpServer, Request, Response, error_response
from serving.errors import ServingError, invalid_argument
from serving.inference.model_ref import ModelRef
from serving.inference.service import InferenceService
from serving.manager.state import VersionStatus

log = logging.getLogger("serving.rest")

_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_POST = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
_GET = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = (1 << 63) - 1
OPENAPI_PATH = "/v1/openapi.json"


def _openapi() -> bytes:
    return resources.files("serving.api.rest").joinpath("openapi.json").read_bytes()


class RestApi:
    """The `/v1/...` handler. `observer` (optional) gets start/finish per request."""

    def __init__(
        self, service: InferenceService, observer: Any = None, timeout_s: float | None = None
    ) -> None:
        self.service = service
        self.observer = observer
        self.timeout_s = timeout_s
        self._openapi: bytes | None = None

    def mount(self, http: HttpServer) -> None:
        http.add_route("GET", OPENAPI_PATH, self.openapi)
        http.set_prefix_handler("/v1/", self.handle)

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = _openapi()
        return Response(200, self._openapi)

    async def handle(self, request: Request) -> Response:
        method, path = request.method, request.path
        api, ref = "", None
        token = None
        code = grpc.StatusCode.OK
        started = time.monotonic()
        try:
            route = self._route(method, path)
            if route is None:
                raise invalid_argument(f"Malformed request: {method} {path}")
            api, ref, verb = route
            if self.observer is not None:
                token = self.observer.start(api, "rest", ref.name)
            body = await verb(ref, request.body)
            return Response(200, body)
        except ServingError as exc:
            code = exc.code
            return error_response(exc.http_status, exc.message)
        except asyncio.CancelledError:
            # Cancelled by the HTTP server's time limit, or the client went away.
            late = self.timeout_s is not None and time.monotonic() - started >= self.timeout_s
            code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            log.exception("REST %s %s failed", method, path)
            return error_response(500, f"{type(exc).__name__}: {exc}")
        finally:
            if token is not None:
                self.observer.finish(token, code)

    # ------------------------------------------------------------------ routing

    def _route(self, method: str, path: str) -> tuple[str, ModelRef, Callable] | None:
        if method == "POST":
            match = _POST.fullmatch(path)
            if match is None:
                return None
            name, version, label, verb = match.groups()
            ref = _ref(name, version, label)
            verb = verb.lower()
            handler = {"predict": self.predict, "classify": self.classify, "regress": self.regress}
            return verb, ref, handler[verb]
        if method in ("GET", "HEAD"):
            match = _GET.fullmatch(path)
            if match is None:
                return None
            name, version, label, metadata = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            ref = _ref(name, version, label)
            if metadata:
                return "get_model_metadata", ref, self.metadata
            return "get_model_status", ref, self.status
        return None

    # ------------------------------------------------------------------- verbs

    async def predict(self, ref: ModelRef, body: bytes) -> bytes:
        doc = decode.parse_json(body)
        signature_name = decode.signature_name(doc)
        ref = ModelRef(ref.name, ref.version, ref.label, signature_name)
        specs = self._input_specs(ref)
        fast = b"true" not in body and b"false" not in body
        inputs, layout = decode.predict_inputs(doc, specs, fast)
        result = await self.service.predict(ref, inputs)
        if layout == decode.ROW:
            return jsonfmt.predict_row(result.outputs)
        return jsonfmt.predict_columnar(result.outputs)

    def _input_specs(self, ref: ModelRef):
        """The signature's inputs (TF Serving's GetInfoMap: lookup errors come first)."""
        with self.service.manager.acquire(ref.servable_request) as servable:
            key = ref.signature_name or servable.default_signature
            signature = servable.signatures.get(key)
            if signature is None:
                raise invalid_argument(
                    f'Serving signature name: "{key}" not found in signature def'
                )
            if not signature.inputs:
                raise invalid_argument(
                    f"Failed to get input map for signature: {ref.signature_name or 'DEFAULT'}"
                )
            return signature.inputs

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
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.service.status(ref):
            _version_status(status, response.model_version_status.add())
        return _proto_json(response).encode()

    async def metadata(self, ref: ModelRef, body: bytes) -> bytes:
        result = self.service.metadata(ref)
        spec = model_pb2.ModelSpec(name=result.name)
        spec.version.value = result.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in result.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
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


def _version_status(status: VersionStatus, out: get_model_status_pb2.ModelVersionStatus) -> None:
    out.version = status.version
    out.state = int(status.state)
    out.status.error_code = status.error_code
    out.status.error_message = status.error


def _ordered(message, data: dict) -> dict:
    """Key order of protobuf's C++ JSON printer: plain fields first, then set oneof members."""
    plain: dict[str, object] = {}
    oneof: dict[str, object] = {}
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


def _proto_json(message, names: bool = False) -> str:
    """MessageToJsonString(add_whitespace, always_print_primitive_fields) + trailing newline."""
    import json

    data = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=names,
    )
    return json.dumps(_ordered(message, data), indent=1, ensure_ascii=False) + "\n"
