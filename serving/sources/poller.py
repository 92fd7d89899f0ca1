"""Polls each model's base path and tells its target (the manager) what to serve."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from serving.config.model_config import ModelConfig
from serving.config.version_policy import missing_versions, select_versions
from serving.sources.source import AspiredVersion, SourceTarget
from serving.storage import StorageError, Storages, is_remote
from serving.storage.local import fingerprint

log = logging.getLogger(__name__)


class FileSystemSource:
    """One thread, every `poll_seconds`: list versions, apply policy, aspire.

    `poll_seconds == 0` polls once per configuration change (TF Serving's
    "poll once").

    Base paths are read through `serving.storage` (local folders and object
    storage alike). A remote base path that cannot be listed (missing bucket,
    denied, unreachable) is retried with exponential backoff, capped at
    MAX_BACKOFF_S; its error shows in the model's status and versions already
    serving keep serving.
    """

    MAX_BACKOFF_S = 60.0

    def __init__(
        self,
        target: SourceTarget,
        poll_seconds: float,
        storages: Storages | None = None,
    ) -> None:
        self._target = target
        self._poll_seconds = poll_seconds
        self.storages = storages or Storages()
        self._failures: dict[str, tuple[int, float]] = {}  # name -> (count, next try)
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
            old = self._models
            removed = set(old) - set(models)
            self._models = dict(models)
        for name in removed:
            self._target.set_aspired_versions(name, {})
            self._target.set_source_error(name, None)
            self._failures.pop(name, None)
        kept = {m.base_path for m in models.values()}
        for model in old.values():
            if model.base_path not in kept:
                self.storages.close(model.base_path)
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
            elif self._failures or self.storages.pending():
                # "Poll once" still retries a base path that could not be listed,
                # and lists again a remote version caught mid-upload (a version
                # is taken up only once two listings agree).
                due = min((t for _, t in self._failures.values()), default=0.0)
                least = 1.0 if self.storages.pending() else 0.05
                self._wake.wait(max(least, due - time.monotonic()))
            else:
                self._wake.wait()

    def poll_once(self) -> None:
        with self._lock:
            models = list(self._models.values())
        # Cached copies are dropped per base path, keeping what any model
        # reading it still aspires (two models may share a base path).
        keep: dict[str, set[int]] = {}
        unlisted: set[str] = set()
        for model in models:
            chosen = self._poll_model(model)
            if chosen is None:
                unlisted.add(model.base_path)
            else:
                keep.setdefault(model.base_path, set()).update(chosen)
        for base_path, versions in keep.items():
            if base_path not in unlisted:
                self.storages.open(base_path).retain(versions)

    def _poll_model(self, model: ModelConfig) -> set[int] | None:
        """Aspire the model's versions; the chosen ones, or None if not listed."""
        failed = self._failures.get(model.name)
        if failed is not None and failed[1] > time.monotonic():
            return None
        try:
            versions = self.storages.versions(model.base_path)
        except StorageError as exc:
            # Keep serving what is loaded: a transient storage error must not
            # unload a model (TF Serving also leaves the aspired set alone).
            message = str(exc)
            if not is_remote(model.base_path):
                message = (
                    f"Could not find base path {model.base_path} for servable {model.name}: "
                    + message.split(": ", 1)[-1]
                )
            else:
                count = failed[0] + 1 if failed else 1
                delay = min(self.MAX_BACKOFF_S, max(self._poll_seconds, 0.5) * 2 ** (count - 1))
                self._failures[model.name] = (count, time.monotonic() + delay)
                message = f"{message} (servable {model.name}; retrying in {delay:.1f}s)"
            self._report(model.name, message)
            self._target.set_source_error(model.name, str(exc))
            return None
        if failed is not None:
            log.info("%s: base path %s is readable again", model.name, model.base_path)
            del self._failures[model.name]
        self._target.set_source_error(model.name, None)
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
        aspired = {}
        for v in sorted(chosen):
            location = versions[v]
            stamp = self.storages.fingerprint(location)
            aspired[v] = AspiredVersion(location, fingerprint(location) if stamp is None else stamp)
        self._target.set_aspired_versions(model.name, aspired)
        return chosen

    def _report(self, key: str, message: str) -> None:
        """Log a problem once, not on every poll."""
        if self._problems.get(key) != message:
            self._problems[key] = message
            log.warning("%s", message)
