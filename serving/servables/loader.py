"""Turn a version folder into a Servable."""

from __future__ import annotations

from serving.servables.base import LoadError, Servable
from serving.servables.session_bundle import SessionOptions, SessionServable


def load_servable(name: str, version: int, path: str, options: SessionOptions) -> Servable:
    """Load one version; raises LoadError with a message fit for its status."""
    try:
        return SessionServable(name, version, path, options)
    except LoadError:
        raise
    except Exception as exc:  # TF raises many types; all mean "did not load"
        raise LoadError(f"{type(exc).__name__}: {exc}") from exc
