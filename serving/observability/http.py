"""HTTP side of observability: the metrics page and the Kubernetes probes.

The handlers are protocol-neutral (`Endpoints.handle(path)` → `HttpResponse`),
so the REST server mounts them with its own routing. Paths:

    GET /v1/health/live          200 while the process runs
    GET /v1/health/ready         200 when ready, 503 while starting/draining
    GET <monitoring path>        Prometheus text page (only if enabled)

`MiniHttpServer` serves just these routes when the process has no REST API
server of its own (so probes and scraping work on the REST port regardless).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from serving.observability.health import Health
from serving.observability.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("serving.http")

LIVE_PATH = "/v1/health/live"
READY_PATH = "/v1/health/ready"
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
JSON = "application/json"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = JSON


class Endpoints:
    def __init__(self, health: Health, metrics: Metrics, metrics_path: str | None) -> None:
        self.health = health
        self.metrics = metrics
        self.metrics_path = metrics_path

    def routes(self) -> dict[str, object]:
        """GET path → handler; what the REST server should mount."""
        routes: dict[str, object] = {LIVE_PATH: self.live, READY_PATH: self.ready}
        if self.metrics_path:
            routes[self.metrics_path] = self.metrics_page
        return routes

    def live(self) -> HttpResponse:
        return HttpResponse(200, b'{"status": "alive"}')

    def ready(self) -> HttpResponse:
        state, models = self.health.state()
        body = {
            "status": state,
            "models": {name: "AVAILABLE" if ok else "NOT_AVAILABLE" for name, ok in models.items()},
        }
        return HttpResponse(200 if state == "ready" else 503, json.dumps(body).encode())

    def metrics_page(self) -> HttpResponse:
        return HttpResponse(200, self.metrics.page(), CONTENT_TYPE)

    def handle(self, method: str, path: str) -> HttpResponse | None:
        """The response for `path`, or None if it is not one of ours."""
        handler = self.routes().get(path.split("?", 1)[0])
        if handler is None:
            return None
        if method not in ("GET", "HEAD"):
            return HttpResponse(405, b'{"error": "Method not allowed"}')
        return handler()  # type: ignore[operator]


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class MiniHttpServer:
    """HTTP/1.1 GET-only server for the observability routes (no REST API present)."""

    def __init__(self, endpoints: Endpoints) -> None:
        self._endpoints = endpoints
        self._server: asyncio.base_events.Server | None = None

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line:
                    return
                parts = line.decode("latin-1").split()
                keep_alive = len(parts) == 3 and parts[2] == "HTTP/1.1"
                length = 0
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = header.decode("latin-1").partition(":")
                    key = key.strip().lower()
                    if key == "content-length":
                        length = int(value.strip() or 0)
                    elif key == "connection":
                        keep_alive = value.strip().lower() != "close"
                if length:
                    await reader.readexactly(length)
                response = None
                if len(parts) >= 2:
                    response = self._endpoints.handle(parts[0], parts[1])
                if response is None:
                    response = HttpResponse(404, b'{"error": "Not found"}')
                head = (
                    f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                    f"Content-Type: {response.content_type}\r\n"
                    f"Content-Length: {len(response.body)}\r\n"
                    f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
                ).encode()
                writer.write(head if parts and parts[0] == "HEAD" else head + response.body)
                await writer.drain()
                if not keep_alive:
                    return
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
