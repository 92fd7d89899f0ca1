"""HTTP side of observability: the metrics page and the Kubernetes probes.

The handlers are protocol-neutral (`Endpoints.routes()`: path → `() -> HttpResponse`),
mounted on the REST server (`ModelServer.http.add_route`) by the server,
which knows both layers. Paths:

    GET /v1/health/live          200 while the process runs
    GET /v1/health/ready         200 when ready, 503 while starting/draining
    GET <monitoring path>        Prometheus text page (only if enabled)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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

    def routes(self) -> dict[str, Callable[[], HttpResponse]]:
        """GET path → handler; what the REST server should mount."""
        routes: dict[str, Callable[[], HttpResponse]] = {
            LIVE_PATH: self.live,
            READY_PATH: self.ready,
        }
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
