"""Explicit model load/unload on the model config ServerCore manages.

The V2 model repository extension acts through this: `unload` removes a
model from the current config (remembering its entry), `load` puts a
remembered or configured model back, or adds a new one from a base path, then
waits, as HandleReloadConfigRequest does, until it is available. When the
server polls a --model_config_file, the file is the source of truth and every
change here is refused.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from serving.config.model_config import ConfigError, ModelConfig, ServerModels
from serving.core import ServerCore
from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.manager.state import State

_LOAD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RepositoryEntry:
    name: str
    version: str  # "" for a model with no version known to the manager
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""


class ModelRepository:
    def __init__(self, core: ServerCore, *, read_only_reason: str = "") -> None:
        self.core = core
        self.read_only_reason = read_only_reason
        self._known: dict[str, ModelConfig] = {}
        self._lock = threading.Lock()

    def index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        configured = self.core.models.by_name()
        with self._lock:
            names = sorted(set(configured) | set(self._known))
        entries: list[RepositoryEntry] = []
        for name in names:
            try:
                statuses = self.core.manager.status(name)
            except ServingError:
                statuses = []
            if not statuses and not ready_only:
                reason = "loading" if name in configured else "unloaded"
                state = "LOADING" if name in configured else "UNAVAILABLE"
                entries.append(RepositoryEntry(name, "", state, reason))
            for status in statuses:
                state = _STATES.get(status.state, "UNAVAILABLE")
                if ready_only and state != "READY":
                    continue
                reason = status.error or ("unloaded" if status.state == State.END else "")
                entries.append(RepositoryEntry(name, str(status.version), state, reason))
        return entries

    def load(self, name: str, base_path: str | None = None) -> None:
        """Configure `name` (a known model, or a new one at `base_path`) and wait for it."""
        self._check_writable()
        with self._lock:
            models = self.core.models
            current = models.by_name()
            model = current.get(name) or self._known.get(name)
            if base_path is not None:
                if not os.path.isabs(base_path) and "://" not in base_path:
                    raise invalid_argument(f"base_path must be absolute; got {base_path}")
                try:
                    model = (
                        model.model_copy(update={"base_path": base_path})
                        if model is not None
                        else ModelConfig(name=name, base_path=base_path)
                    )
                except (ConfigError, ValueError) as exc:
                    raise invalid_argument(str(exc)) from None
            if model is None:
                raise not_found(
                    f"unknown model '{name}': it is not in the model config; "
                    "give its base_path to load it"
                )
            if "://" not in model.base_path and not os.path.isdir(model.base_path):
                raise invalid_argument(
                    f"Could not find base path {model.base_path} for model '{name}'"
                )
            self._known[name] = model
            kept = tuple(m for m in models.models if m.name != name)
            self.core.apply(ServerModels(models=(*kept, model)))
        self.core.source.poll_once()
        manager = self.core.manager
        manager.wait_until(lambda: manager.is_settled(name), _LOAD_TIMEOUT_S)
        if not manager.available_versions(name):
            errors = "; ".join(s.error for s in _statuses(self.core, name) if s.error)
            detail = f": {errors}" if errors else ""
            raise failed_precondition(f"failed to load '{name}'{detail}")

    def unload(self, name: str, timeout_s: float = 30.0) -> None:
        """Take `name` out of the config; returns once no version of it serves."""
        self._check_writable()
        with self._lock:
            models = self.core.models
            current = models.by_name()
            if name not in current:
                if name in self._known:
                    return
                raise not_found(f"unknown model '{name}'")
            self._known[name] = current[name]
            self.core.apply(ServerModels(models=tuple(m for m in models.models if m.name != name)))
        manager = self.core.manager
        deadline = time.monotonic() + timeout_s
        while manager.available_versions(name) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _check_writable(self) -> None:
        if self.read_only_reason:
            raise failed_precondition(self.read_only_reason)


_STATES = {
    State.AVAILABLE: "READY",
    State.START: "LOADING",
    State.LOADING: "LOADING",
    State.UNLOADING: "UNLOADING",
    State.END: "UNAVAILABLE",
}


def _statuses(core: ServerCore, name: str) -> list:
    try:
        return core.manager.status(name)
    except ServingError:
        return []
