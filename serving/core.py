"""ServerCore: applies model configurations (start-up, file polling, gRPC reload)."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.config.model_config import ConfigError, ServerModels, from_proto, load_file
from serving.errors import ServingError, invalid_argument
from serving.manager.manager import ServableManager
from serving.manager.state import State
from serving.sources.poller import FileSystemSource

log = logging.getLogger(__name__)


class ServerCore:
    def __init__(self, manager: ServableManager, source: FileSystemSource) -> None:
        self.manager = manager
        self.source = source
        self._models: ServerModels | None = None
        self._lock = threading.Lock()
        self._config_text: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def models(self) -> ServerModels:
        return self._models or ServerModels(models=())

    def apply(self, models: ServerModels, *, require_absolute: bool = True) -> list[str]:
        """Switch to `models`; returns the names of models that are new.

        Raises ServingError (INVALID_ARGUMENT) and changes nothing if the new
        configuration is not acceptable.
        """
        with self._lock:
            old = self.models.by_name()
            for model in models.models:
                if require_absolute and not _is_absolute(model.base_path):
                    raise invalid_argument(
                        f"Expected model {model.name} to have an absolute path or URI; "
                        f"got base_path()={model.base_path}"
                    )
                previous = old.get(model.name)
                if previous is not None and previous.platform != model.platform:
                    raise invalid_argument(
                        f"Illegal to change a model's platform. For model {model.name} "
                        f"platform was {previous.platform} and new platform requested is "
                        f"{model.platform}"
                    )
            self._models = models
            new = models.by_name()
            self.source.set_models(new)  # a removed model: nothing aspired any more
            added = [name for name in new if name not in old]
            removed = [name for name in old if name not in new]
            for model in models.models:
                self.manager.set_labels(model.name, model.version_labels)
            for name in removed:
                self.manager.set_labels(name, {})
            log.info(
                "model config applied: %d model(s)%s%s",
                len(new),
                f", added {', '.join(added)}" if added else "",
                f", removed {', '.join(removed)}" if removed else "",
                extra={
                    "fields": {
                        "event": "config_applied",
                        "models": sorted(new),
                        "added": added,
                        "removed": removed,
                    }
                },
            )
            return added

    def reload(self, proto: model_server_config_pb2.ModelServerConfig, timeout: float) -> None:
        """HandleReloadConfigRequest: apply, then wait for new models as TF Serving does."""
        try:
            models = from_proto(proto)
        except (ConfigError, ValueError) as exc:
            raise invalid_argument(str(exc)) from None
        added = self.apply(models)
        self.source.poll_once()
        deadline = time.monotonic() + timeout
        for name in added:
            self.manager.wait_until(
                functools.partial(self.manager.is_settled, name),
                max(0.0, deadline - time.monotonic()),
            )
        failed = []
        for name in added:
            try:
                statuses = self.manager.status(name)
            except ServingError:
                failed.append(f"{{name: {name}}}")
                continue
            if not any(s.state == State.AVAILABLE for s in statuses):
                errors = "; ".join(s.error for s in statuses if s.error)
                failed.append(f"{{name: {name}}}" + (f" due to error: {errors}" if errors else ""))
        if failed:
            raise ServingError(
                grpc.StatusCode.UNKNOWN,
                f"{len(failed)} model(s) did not become available: {{"
                + "".join(f"{item}, " for item in failed)
                + "}",
            )

    # ----------------------------------------------------- config file polling

    def watch_file(self, path: str, poll_seconds: float) -> None:
        """Re-read `path` every `poll_seconds`; a bad file keeps the old config."""
        if poll_seconds <= 0:
            return
        self._poller = threading.Thread(
            target=self._poll_file, args=(path, poll_seconds), name="config-poll", daemon=True
        )
        self._poller.start()

    def remember_text(self, path: str) -> None:
        try:
            with open(path) as f:
                self._config_text = f.read()
        except OSError:
            self._config_text = None

    def _poll_file(self, path: str, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            try:
                with open(path) as f:
                    text = f.read()
            except OSError as exc:
                log.error("Failed to read ModelServerConfig file %s: %s", path, exc)
                continue
            if text == self._config_text:
                continue
            try:
                models = load_file(path)
                self.apply(models)
            except (ConfigError, ServingError) as exc:
                log.error(
                    "config reload failed, keeping the previous config: %s",
                    exc,
                    extra={"fields": {"event": "config_rejected", "error": str(exc)}},
                )
            # Remember bad text too, so it is reported once and not every poll.
            self._config_text = text

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)


def _is_absolute(path: str) -> bool:
    return os.path.isabs(path) or "://" in path
