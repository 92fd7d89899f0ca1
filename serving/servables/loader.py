"""Turn a version folder into a Servable."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from serving.servables.base import LoadError, Servable
from serving.servables.session_bundle import (
    SessionOptions,
    SessionServable,
    VariablesNotRestored,
)

log = logging.getLogger(__name__)


def load_servable(name: str, version: int, path: str, options: SessionOptions) -> Servable:
    """Load one version; raises LoadError with a message fit for its status.

    The Session loader first (TF Serving's semantics and the fastest calls);
    TF2's object-graph loader for exports only it can restore.
    """
    try:
        return SessionServable(name, version, path, options)
    except VariablesNotRestored as exc:
        log.info("%s: %s; trying the TF2 object-graph loader", path, exc)
        from serving.servables.object_graph import ObjectGraphServable

        return ObjectGraphServable(name, version, path, options)
    except LoadError:
        raise
    except Exception as exc:  # TF raises many types; all mean "did not load"
        raise LoadError(f"{type(exc).__name__}: {exc}") from exc


def load_placed(name: str, version: int, path: str, replicas: Sequence[SessionOptions]) -> Servable:
    """Load one version on each device of its placement (one session per device).

    A single device gives the plain servable; several give a ReplicatedServable
    that spreads calls across them. A replica that fails unloads the others.
    """
    if len(replicas) == 1:
        return load_servable(name, version, path, replicas[0])
    from serving.devices.replicated import ReplicatedServable

    loaded: list[Servable] = []
    try:
        for options in replicas:
            loaded.append(load_servable(name, version, path, options))
    except BaseException:
        for servable in loaded:
            servable.close()
        raise
    return ReplicatedServable(loaded)
