"""TF Serving's `/v1` REST API as a thin adapter over `InferenceService`.

Routing follows TF Serving's regular expressions (case-insensitive, full
match); anything else under /v1 is `Malformed request: <METHOD> <path>` (400).
Each routed request runs inside `service.observe(...)`, the request context
every protocol shares (metrics, the time limit, canonical error codes); what
leaves it is a `ServingError`, mapped to HTTP by `ServingError.http_status`
and written as TF Serving's `{"error": ...}` body.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any
from urllib.parse import unquote

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from serving.api.grpc.codec import DEFAULT_MAX_ELEMENTS, check_input_sizes, check_output_sizes
from serving.api.messages import model_spec, signature_def_map, status_response
from serving.api.rest import decode, jsonfmt, numeric
from serving.api.rest.http import HttpServer, Request, Response, error_response
from serving.errors import ServingError, failed_precondition, invalid_argument
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
_ORIGIN = re.compile(r"https?://")
# Bodies (and response tensors) above this size are parsed, converted and
# written in a worker thread, so one large request does not stall the loop
# every other client is served from; below it a thread hop costs more than it saves.
OFFLOAD_BYTES = 1 << 20
# Worker threads for large JSON: at most this many large bodies are decoded at
# once (each costs several times its size in memory), the rest wait their turn.
JSON_WORKERS = 2

# A verb: (model reference from the path, request body) -> response body.
# The verb takes the body out of the request (`request.body` is emptied), so a
# large body is freed once parsed rather than when the response is written.
Verb = Callable[[ModelRef, Request], Awaitable[bytes | list[bytes] | jsonfmt.Pieces]]


def _openapi() -> bytes:
    return resources.files("serving.api.rest").joinpath("openapi.json").read_bytes()


class RestApi:
    """The `/v1/...` handler: routes, decodes JSON, calls the service, encodes JSON.

    `observer` is accepted for the transport's wiring and unused: requests are
    counted by the service's own observer (`service.observe`). `timeout_s`
    (--rest_api_timeout_in_ms) is each request's time limit, enforced there too.
    `max_elements` (--max_tensor_elements) bounds every request and response
    tensor, as on gRPC.
    """

    def __init__(
        self,
        service: InferenceService,
        observer: Any = None,
        timeout_s: float | None = None,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        self.service = service
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self.max_elements = max_elements
        self._openapi: bytes | None = None
        self._pool: ThreadPoolExecutor | None = None
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
            if request.method == "OPTIONS":
                return self.preflight(request)
            api, ref, verb = self.route(request.method, request.path)
            async with self.service.observe(api, PROTOCOL, ref.name, self.timeout_s):
                answer = await verb(ref, request)
            return Response(200, answer)
        except ServingError as exc:
            return error_response(exc.http_status, exc.message)

    @staticmethod
    def preflight(request: Request) -> Response:
        """TF Serving's answer to a CORS preflight: 200 when it names an http(s) origin."""
        if _ORIGIN.search(request.headers.get("origin", "")):
            return Response(200, b"")
        raise failed_precondition("Origin header is missing in CORS preflight")

    # ------------------------------------------------------- large bodies

    def _deadline(self) -> float | None:
        return time.monotonic() + self.timeout_s if self.timeout_s is not None else None

    async def _offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the JSON worker threads; the caller's time limit still applies
        to the wait, and `fn` checks the deadline between its own stages."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(JSON_WORKERS, thread_name_prefix="rest-json")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

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

    async def predict(
        self, ref: ModelRef, request: Request
    ) -> bytes | list[bytes] | jsonfmt.Pieces:
        if len(request.body) > OFFLOAD_BYTES:
            return await self._predict_large(ref, request)
        body = _take_body(request)
        doc = decode.parse_json(body)
        ref = ModelRef(ref.name, ref.version, ref.label, decode.signature_name(doc))
        fast = b"true" not in body and b"false" not in body
        layout = decode.ROW

        def inputs(specs: Mapping[str, TensorSpec]) -> Mapping[str, np.ndarray]:
            # JSON has no types of its own: decoded against the signature's inputs.
            nonlocal layout
            arrays, layout = decode.predict_inputs(doc, specs, fast)
            check_input_sizes(arrays, self.max_elements)
            return arrays

        result = await self.service.predict(ref, inputs)
        check_output_sizes(result.outputs, self.max_elements)
        if layout == decode.ROW:
            return jsonfmt.predict_row(result.outputs)
        return jsonfmt.predict_columnar(result.outputs)

    async def _predict_large(
        self, ref: ModelRef, request: Request
    ) -> bytes | list[bytes] | jsonfmt.Pieces:
        """`predict` with the parse, the conversion to arrays and the response in worker
        threads; each stage first checks the request's deadline, so work for a request
        that has already timed out stops at the next stage."""
        deadline = self._deadline()
        holder = [_take_body(request)]
        doc, fast, deferred = await self._offload(_parse_large, holder, deadline)
        ref = ModelRef(ref.name, ref.version, ref.label, decode.signature_name(doc))
        layout = decode.ROW

        async def inputs(specs: Mapping[str, TensorSpec]) -> Mapping[str, np.ndarray]:
            nonlocal layout, doc, deferred
            arrays, layout = await self._offload(_convert, doc, deferred, specs, fast, deadline)
            doc = deferred = None  # the body and Python objects go once the arrays exist
            check_input_sizes(arrays, self.max_elements)
            return arrays

        result = await self.service.predict(ref, inputs)
        check_output_sizes(result.outputs, self.max_elements)
        encode: Callable[[Mapping[str, np.ndarray]], list[bytes] | jsonfmt.Pieces] = (
            jsonfmt.predict_row_pieces if layout == decode.ROW else jsonfmt.predict_columnar_pieces
        )
        if sum(a.nbytes for a in result.outputs.values()) <= OFFLOAD_BYTES // 8:
            return encode(result.outputs)
        return await self._offload(_encode, encode, result.outputs, deadline)

    async def classify(self, ref: ModelRef, request: Request) -> bytes:
        ref, examples = await self._examples(ref, request)
        result = await self.service.classify(ref, examples)
        return jsonfmt.classify_json(result.classes, result.scores)

    async def regress(self, ref: ModelRef, request: Request) -> bytes:
        ref, examples = await self._examples(ref, request)
        result = await self.service.regress(ref, examples)
        return jsonfmt.regress_json(result.values)

    async def _examples(self, ref: ModelRef, request: Request) -> tuple[ModelRef, np.ndarray]:
        """The signature and serialized tf.Examples; a large body off the event loop."""
        if len(request.body) <= OFFLOAD_BYTES:
            doc = decode.parse_json(_take_body(request))
            ref = ModelRef(ref.name, ref.version, ref.label, decode.signature_name(doc))
            return ref, decode.examples(doc)
        deadline = self._deadline()
        doc = await self._offload(_parse_examples, [_take_body(request)], deadline)
        ref = ModelRef(ref.name, ref.version, ref.label, decode.signature_name(doc))
        return ref, await self._offload(decode.examples, doc)

    async def status(self, ref: ModelRef, request: Request) -> bytes:
        return _proto_json(status_response(self.service.status(ref))).encode()

    async def metadata(self, ref: ModelRef, request: Request) -> bytes:
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


def _take_body(request: Request) -> bytes | bytearray:
    body, request.body = request.body, b""
    return body


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def _parse_examples(holder: list, deadline: float | None) -> dict:
    body = holder.pop()  # the only reference: the body is freed once parsed
    _check_deadline(deadline)
    return decode.parse_json(body)


def _parse_large(
    holder: list, deadline: float | None
) -> tuple[dict, bool, numeric.Deferred | None]:
    """The document; large arrays of plain numbers stay text (checked) until the
    signature's dtypes are known, the rest of the body is freed once parsed."""
    body = holder.pop()
    _check_deadline(deadline)
    fast = b"true" not in body and b"false" not in body
    split = numeric.split(body)
    if split is not None:
        return split[0], fast, split[1]
    return decode.parse_json(body), fast, None


def _convert(
    doc: dict,
    deferred: numeric.Deferred | None,
    specs: Mapping[str, TensorSpec],
    fast: bool,
    deadline: float | None,
) -> tuple[dict[str, np.ndarray], str]:
    _check_deadline(deadline)
    if deferred is not None:
        return numeric.predict_inputs(doc, deferred, specs, fast)
    return decode.predict_inputs(doc, specs, fast)


def _encode(
    encode: Callable[[Mapping[str, np.ndarray]], list[bytes] | jsonfmt.Pieces],
    outputs: Mapping[str, np.ndarray],
    deadline: float | None,
) -> list[bytes] | jsonfmt.Pieces:
    _check_deadline(deadline)
    return encode(outputs)


def _ref(name: str, version: str | None, label: str | None) -> ModelRef:
    model = unquote(name)
    number = None
    if version is not None:
        # Checked on the digits: Python refuses int() past a few thousand of them.
        if len(version.lstrip("0")) > 19 or int(version) > _INT64_MAX:
            shown = version if len(version) <= 32 else version[:32] + "..."
            raise invalid_argument(f"Failed to convert version: {shown} to numeric.")
        number = int(version)
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
