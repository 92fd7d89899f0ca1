"""Polls each model's base path and tells its target (the manager) what to serve."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from serving.config.model_config import ModelConfig
from serving.config.version_policy import missing_versions, select_versions
from serving.sources.file_system import fingerprint
from serving.sources.hub_paths import list_model_versions
from serving.sources.source import AspiredVersion, AspiredVersionsTarget
from serving.storage.hub import HubError

log = logging.getLogger(__name__)


class FileSystemSource:
    """One thread, every `poll_seconds`: list versions, apply policy, aspire.

    `poll_seconds == 0` polls once per configuration change (TF Serving's
    "poll once").
    """

    def __init__(self, target: AspiredVersionsTarget, poll_seconds: float) -> None:
        self._target = target
        self._poll_seconds = poll_seconds
        self._models: dict[str, ModelConfig] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._problems: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="fs-source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_models(self, models: Mapping[str, ModelConfig]) -> None:
        """Replace the watched models; removed models are unloaded."""
        with self._lock:
            removed = set(self._models) - set(models)
            self._models = dict(models)
        for name in removed:
            self._target.set_aspired_versions(name, {})
        self.poll_now()

    def poll_now(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.poll_once()
            if self._poll_seconds > 0:
                self._wake.wait(self._poll_seconds)
            else:
                self._wake.wait()

    def poll_once(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            self._poll_model(model)

    def _poll_model(self, model: ModelConfig) -> None:
        try:
            versions = list_model_versions(model.base_path)
        except HubError as exc:
            self._report(model.name, f"Servable {model.name}: {exc}")
            return
        except OSError as exc:
            # Keep serving what is loaded: a transient storage error must not
            # unload a model (TF Serving also leaves the aspired set alone).
            self._report(
                model.name,
                f"Could not find base path {model.base_path} for servable {model.name}: "
                f"{exc.strerror or exc}",
            )
            return
        if not versions:
            self._report(
                model.name,
                f"No versions of servable {model.name} found under base path {model.base_path}",
            )
        else:
            self._problems.pop(model.name, None)
        chosen = select_versions(model.version_policy, versions)
        for missing in missing_versions(model.version_policy, versions):
            self._report(
                f"{model.name}/{missing}",
                f"Version {missing} of servable {model.name}, which was requested to be "
                "served as a 'specific' version in the servable's version policy, was not "
                "found in the file system",
            )
        # Fingerprints are taken here, on the source's thread: the manager
        # never walks storage.
        aspired = {
            v: AspiredVersion(versions[v].path, fingerprint(versions[v].path))
            for v in sorted(chosen)
        }
        self._target.set_aspired_versions(model.name, aspired)

    def _report(self, key: str, message: str) -> None:
        """Log a problem once, not on every poll."""
        if self._problems.get(key) != message:
            self._problems[key] = message
            log.warning("%s", message)
