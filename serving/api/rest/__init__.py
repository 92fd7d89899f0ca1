"""TF Serving's REST API (`/v1/models/...`) on --rest_api_port.

`start_rest` builds the HTTP server (`http.HttpServer`), mounts the API
(`handlers.RestApi`) and starts listening on the running event loop, the same
loop as gRPC. Flags:

- `--rest_api_port`: 0 disables REST (TF Serving's default);
- `--rest_api_timeout_in_ms`: per-request limit, 504 DEADLINE_EXCEEDED past it;
- `--rest_api_enable_cors_support`: TF Serving's three CORS headers;
- `--max_request_bytes`: largest accepted body (0 = 2 GiB - 1), 413 beyond;
- `--rest_api_num_threads`: accepted for compatibility. TF Serving sizes its
  HTTP worker pool with it; here HTTP parsing, JSON and routing run on the
  event loop and model calls on the shared executor (`--grpc_max_threads`),
  so it has no effect.
"""

from __future__ import annotations

import logging
from typing import Any

from serving.api.rest.handlers import RestApi
from serving.api.rest.http import HttpServer, Request, Response
from serving.errors import StartupError

log = logging.getLogger("serving.rest")

__all__ = ["HttpServer", "Request", "Response", "RestApi", "start_rest"]


async def start_rest(options: Any, service: Any, observer: Any = None) -> HttpServer | None:
    """Start REST on `options.rest_api_port`; None when the port is 0."""
    if not options.rest_api_port:
        return None
    timeout_s = options.rest_api_timeout_in_ms / 1000.0 or None
    # The time limit is the request context's (RestApi), not the transport's:
    # two timers on the same limit would race over the request's status code.
    http = HttpServer(
        max_body_bytes=options.max_message_bytes, cors=options.rest_api_enable_cors_support
    )
    RestApi(service, observer, timeout_s).mount(http)
    try:
        await http.start(options.rest_api_port)
    except OSError as exc:
        raise StartupError(
            f"could not bind HTTP/REST to 0.0.0.0:{options.rest_api_port}: {exc.strerror}"
        ) from None
    log.info("Exporting HTTP/REST API at:localhost:%d ...", options.rest_api_port)
    return http
