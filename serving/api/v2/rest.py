"""V2's REST endpoints (`/v2/...`) on the same HTTP server and port as `/v1`.

    GET  /v2                                          server metadata
    GET  /v2/health/live | /v2/health/ready           200 true, 400 false; {"live"|"ready": bool}
    GET  /v2/models/{m}[/versions/{v}]                model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready          200 true, 400 false; {"ready": bool}
    POST /v2/models/{m}[/versions/{v}]/infer          inference (JSON or binary data)
    POST /v2/repository/index                         model repository extension
    POST /v2/repository/models/{m}/load | /unload

Errors are `{"error": "..."}` with the HTTP status of the error's canonical
code (TF Serving's mapping: 400 bad request, 404 unknown model, 503 draining).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson

from serving.api.rest.http import HttpServer, Request, Response
from serving.api.v2 import codec
from serving.api.v2.service import V2Service
from serving.errors import ServingError, invalid_argument, not_found

PROTOCOL = "v2-rest"
HEADER_LENGTH = "inference-header-content-length"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
_REPO = re.compile(r"/v2/repository/models/([^/]+)/(load|unload)")
_EMPTY = b""


def _json(status: int, doc: Any) -> Response:
    return Response(status, orjson.dumps(doc), JSON)


def _error(exc: ServingError) -> Response:
    return _json(exc.http_status, {"error": exc.message})


def _loads(body: bytes | bytearray) -> Any:
    try:
        return orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"malformed JSON in request body: {exc}") from None


class V2Rest:
    """`timeout_s` is --rest_api_timeout_in_ms, enforced by the request context."""

    def __init__(self, v2: V2Service, timeout_s: float | None = None) -> None:
        self.v2 = v2
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None

    def mount(self, http: HttpServer) -> None:
        http.add_route("GET", "/v2", self.server_metadata)
        http.add_route("GET", "/v2/", self.server_metadata)
        http.add_route("GET", "/v2/health/live", self.live)
        http.add_route("GET", "/v2/health/ready", self.ready)
        http.add_route("POST", "/v2/repository/index", self.repository_index)
        http.set_prefix_handler("/v2/", self.handle)

    # ----------------------------------------------------------- fixed paths

    async def server_metadata(self, request: Request) -> Response:
        return _json(200, self.v2.server_metadata())

    # Health answers by status code (200 true, 400 false, as Triton's clients
    # read it) and by body ({"live": ...}, {"ready": ...}, as KServe's read it).
    async def live(self, request: Request) -> Response:
        live = self.v2.live()
        return _json(200 if live else 400, {"live": live})

    async def ready(self, request: Request) -> Response:
        ready = self.v2.ready()
        return _json(200 if ready else 400, {"ready": ready})

    async def repository_index(self, request: Request) -> Response:
        try:
            async with self.v2.observe("repository_index", PROTOCOL, None, self.timeout_s):
                doc = _loads(request.body)
                ready_only = isinstance(doc, dict) and doc.get("ready") is True
                entries = await self.v2.repository_index(ready_only)
        except ServingError as exc:
            return _error(exc)
        body = []
        for e in entries:
            item = {"name": e.name, "state": e.state}
            if e.version:
                item["version"] = e.version
            if e.reason:
                item["reason"] = e.reason
            body.append(item)
        return _json(200, body)

    # --------------------------------------------------- per-model paths

    async def handle(self, request: Request) -> Response:
        path = request.path
        match = _MODEL.fullmatch(path)
        try:
            if match is not None:
                name, version, verb = (unquote(g) if g else "" for g in match.groups())
                if verb == "infer":
                    if request.method != "POST":
                        raise invalid_argument(f"{request.method} {path}: use POST")
                    return await self.infer(request, name, version)
                if request.method not in ("GET", "HEAD"):
                    raise invalid_argument(f"{request.method} {path}: use GET")
                if verb == "ready":
                    ok = self.v2.model_ready(name, version)
                    return _json(200 if ok else 400, {"name": name, "ready": ok})
                return await self.model_metadata(name, version)
            match = _REPO.fullmatch(path)
            if match is not None and request.method == "POST":
                return await self.repository(request, unquote(match[1]), match[2])
            raise not_found(f"Not found: {request.method} {path}")
        except ServingError as exc:
            return _error(exc)

    async def model_metadata(self, name: str, version: str) -> Response:
        async with self.v2.observe("model_metadata", PROTOCOL, name, self.timeout_s):
            meta = self.v2.model_metadata(name, version)
        return _json(
            200,
            {
                "name": meta.name,
                "versions": meta.versions,
                "platform": meta.platform,
                "inputs": [t.__dict__ for t in meta.inputs],
                "outputs": [t.__dict__ for t in meta.outputs],
            },
        )

    async def infer(self, request: Request, name: str, version: str) -> Response:
        async with self.v2.observe("predict", PROTOCOL, name, self.timeout_s):
            header = request.headers.get(HEADER_LENGTH)
            length = None
            if header is not None:
                try:
                    length = int(header)
                except ValueError:
                    raise invalid_argument(
                        f"Inference-Header-Content-Length is not a number: {header[:20]!r}"
                    ) from None
            decoded = codec.parse_infer_request(request.body, length, orjson.loads)
            result = await self.v2.infer(
                name, version, decoded.inputs, decoded.outputs, decoded.parameters
            )
            binary = codec.binary_outputs(decoded, result.outputs)
            body, head_length = codec.infer_response(
                result.name,
                str(result.version),
                result.outputs,
                binary,
                orjson.dumps,
                decoded.id,
            )
        if head_length is None:
            return Response(200, body, JSON)
        headers = [("Inference-Header-Content-Length", str(head_length))]
        return Response(200, body, OCTET_STREAM, headers)

    async def repository(self, request: Request, name: str, action: str) -> Response:
        # No time limit: a load waits for the model, however long that takes.
        async with self.v2.observe(f"repository_{action}", PROTOCOL, None):
            doc = _loads(request.body)
            if action == "unload":
                await self.v2.repository_unload(name)
            else:
                params = doc.get("parameters") if isinstance(doc, dict) else None
                base_path = params.get("base_path") if isinstance(params, dict) else None
                if base_path is not None and not isinstance(base_path, str):
                    raise invalid_argument("parameter base_path must be a string")
                await self.v2.repository_load(name, base_path)
        return Response(200, _EMPTY, JSON)
