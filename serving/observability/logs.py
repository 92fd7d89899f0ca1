"""Log setup (text or JSON lines) and the server's few, clear lifecycle lines.

What is logged at INFO: start-up (ports, models, devices, batching), every
model version state change (with load time or error), every config change,
readiness, and the drain. Requests are not logged.

Structured fields ride on `extra={"fields": {...}}`: the JSON formatter
writes them as top-level keys (`event`, `model`, `version`, `state`,
`seconds`, `error`, ...), the text formatter ignores them (the message says
the same in words).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

from serving.manager.state import State, Transition

log = logging.getLogger("serving")

_RESERVED = {"ts", "level", "logger", "message", "exception"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry[key if key not in _RESERVED else f"field_{key}"] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s"


def setup_logging(fmt: str, level: str) -> None:
    """Route every logger (ours, gRPC's, TensorFlow's Python one) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # TensorFlow's Python logger repeats deprecation notes about the TF1 loader
    # and would otherwise add its own handler (non-JSON lines).
    tf_log = logging.getLogger("tensorflow")
    tf_log.setLevel(logging.ERROR)
    tf_log.handlers[:] = []
    tf_log.propagate = True


def log_transition(event: Transition) -> None:
    """One line per version state change."""
    fields: dict[str, object] = {
        "event": "version_state",
        "model": event.model,
        "version": event.version,
        "state": event.state.name,
    }
    if event.seconds is not None:
        fields["seconds"] = round(event.seconds, 3)
    if event.device:
        fields["device"] = event.device
    head = f"model {event.model} version {event.version} {event.state.name}"
    if event.state == State.AVAILABLE:
        where = f" on {event.device}" if event.device else ""
        seconds = event.seconds or 0.0
        log.info("%s%s (loaded in %.3fs)", head, where, seconds, extra={"fields": fields})
    elif event.state == State.END and event.error:
        fields["error"] = event.error
        log.error("%s: failed to load: %s", head, event.error, extra={"fields": fields})
    elif event.state == State.END and event.seconds is not None:
        log.info("%s (unloaded in %.3fs)", head, event.seconds, extra={"fields": fields})
    else:
        log.info("%s", head, extra={"fields": fields})


def log_startup(
    *,
    grpc_addresses: Sequence[str],
    rest_port: int,
    models: Sequence[tuple[str, str]],
    devices: Sequence[str],
    batching: str,
    metrics_path: str | None,
) -> None:
    """The one start-up summary line."""
    rest = f"0.0.0.0:{rest_port}" if rest_port else "off"
    log.info(
        "model server started: grpc=%s rest=%s metrics=%s models=[%s] devices=[%s] batching=%s",
        ",".join(grpc_addresses) or "off",
        rest,
        metrics_path or "off",
        ", ".join(f"{name} ({path})" for name, path in models),
        ", ".join(devices),
        batching,
        extra={
            "fields": {
                "event": "started",
                "grpc": list(grpc_addresses),
                "rest_port": rest_port,
                "metrics_path": metrics_path,
                "models": {name: path for name, path in models},
                "devices": list(devices),
                "batching": batching,
            }
        },
    )


def visible_devices() -> list[str]:
    """TensorFlow's physical devices, e.g. ["CPU:0", "GPU:0"]."""
    try:
        import tensorflow as tf

        return [d.name.replace("/physical_device:", "") for d in tf.config.list_physical_devices()]
    except Exception:  # device listing must never stop the server
        return []
