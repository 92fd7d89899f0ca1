"""Version states, numbered as TF Serving's ModelVersionStatus.State."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.IntEnum):
    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: State
    error: str = ""  # non-empty only for a version that failed to load
    device: str = ""
    error_code: int = 0  # canonical status code of that failure (0 = OK)


@dataclass(frozen=True)
class Transition:
    """Emitted on every state change, for logs and metrics."""

    model: str
    version: int
    state: State
    error: str = ""
    seconds: float | None = None  # load or unload duration, when one just ended
    device: str = ""

    @property
    def unload_finished(self) -> bool:
        """END after a real unload (not a failed load, nor a load dropped before it ran)."""
        return self.state == State.END and not self.error and self.seconds is not None
