"""TF Serving's REST API (`/v1/models/...`) on --rest_api_port.

`start_rest` builds the HTTP server (`http.HttpServer`: an ASGI app on
uvicorn), mounts the API (`handlers.RestApi`) and starts listening on the
running event loop, the same loop as gRPC. Flags:

- `--rest_api_port`: 0 disables REST (TF Serving's default);
- `--rest_api_host`: the address to bind (ours; TF Serving binds every address);
- `--rest_api_timeout_in_ms`: per-request limit, 504 DEADLINE_EXCEEDED past it;
- `--rest_api_enable_cors_support`: TF Serving's three CORS headers;
- `--rest_api_max_request_bytes` (else `--max_request_bytes`, else 64 MiB): largest
  accepted body, 413 beyond;
- `--rest_api_idle_timeout_seconds`, `--rest_api_read_timeout_seconds`,
  `--rest_api_max_connections`: connection limits (ours);
- `--rest_api_num_threads`: accepted for compatibility. TF Serving sizes its
  HTTP worker pool with it; here HTTP parsing, JSON and routing run on the
  event loop and model calls on the shared executor (`--grpc_max_threads`),
  so it has no effect.
"""

from __future__ import annotations

import logging
from typing import Any

from serving.api.rest.http import HttpServer, Limits, Request, Response
from serving.errors import StartupError

log = logging.getLogger("serving.rest")

__all__ = ["HttpServer", "Limits", "Request", "Response", "RestApi", "start_rest"]


def __getattr__(name: str) -> Any:
    # The handlers import TensorFlow's protos; the transport alone (and its
    # unit tests) should not.
    if name == "RestApi":
        from serving.api.rest.handlers import RestApi

        return RestApi
    raise AttributeError(name)


async def start_rest(options: Any, service: Any, observer: Any = None) -> HttpServer | None:
    """Start REST on `options.rest_api_port`; None when the port is 0."""
    if not options.rest_api_port:
        return None
    from serving.api.rest.handlers import RestApi

    timeout_s = options.rest_api_timeout_in_ms / 1000.0 or None
    limits = Limits(
        idle_timeout_s=options.rest_api_idle_timeout_seconds,
        read_timeout_s=options.rest_api_read_timeout_seconds,
        max_connections=options.rest_api_max_connections,
    )
    # The time limit is the request context's (RestApi), not the transport's:
    # two timers on the same limit would race over the request's status code.
    http = HttpServer(
        max_body_bytes=options.rest_max_body_bytes,
        max_body_flag=(
            "--max_request_bytes"
            if options.max_request_bytes and not options.rest_api_max_request_bytes
            else "--rest_api_max_request_bytes"
        ),
        cors=options.rest_api_enable_cors_support,
        limits=limits,
    )
    RestApi(service, observer, timeout_s, options.max_tensor_elements).mount(http)
    host = options.rest_api_host
    try:
        await http.start(options.rest_api_port, host)
    except OSError as exc:
        raise StartupError(
            f"could not bind HTTP/REST to {host}:{options.rest_api_port}: {exc.strerror or exc}"
        ) from None
    log.info("Exporting HTTP/REST API at:%s:%d ...", _shown(host), options.rest_api_port)
    return http


def _shown(host: str) -> str:
    """TF Serving's start-up line says localhost; keep that unless bound elsewhere."""
    return "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
