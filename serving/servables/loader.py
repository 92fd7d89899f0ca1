"""Turn a version folder into a Servable."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from serving.servables.base import LoadError, Servable
from serving.servables.session_bundle import (
    SessionOptions,
    SessionServable,
    VariablesNotRestored,
)
from serving.servables.tflite import TFLITE_MODEL_FILE, TfLiteOptions, has_tflite_model

log = logging.getLogger(__name__)

NO_TFLITE = TfLiteOptions()


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
    except LoadError as exc:
        if has_tflite_model(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
            # TF Serving reads such a folder as a SavedModel too; say what would serve it.
            raise LoadError(
                f"{exc} (the folder holds {TFLITE_MODEL_FILE}: serve it with "
                "--prefer_tflite_model)",
                exc.code,
            ) from exc
        raise
    except Exception as exc:  # TF raises many types; all mean "did not load"
        raise LoadError(f"{type(exc).__name__}: {exc}") from exc


def load_tflite(name: str, version: int, path: str, options: TfLiteOptions) -> Servable:
    from serving.servables.tflite import TfLiteServable

    try:
        return TfLiteServable(name, version, path, options)
    except LoadError:
        raise
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError; all mean "did not load"
        raise LoadError(f"{type(exc).__name__}: {exc}") from exc


def load_placed(
    name: str,
    version: int,
    path: str,
    replicas: Sequence[SessionOptions],
    tflite: TfLiteOptions = NO_TFLITE,
) -> Servable:
    """Load one version on each device of its placement (one session per device).

    A single device gives the plain servable; several give a ReplicatedServable
    that spreads calls across them. A replica that fails unloads the others.
    A TFLite model (TF Serving's rule: `--prefer_tflite_model` and a
    `model.tflite` in the folder) loads once, on the CPU, with its own pool of
    interpreters.
    """
    if tflite.prefer_tflite_model and has_tflite_model(path):
        devices = [r.device_label or r.device for r in replicas if r.device_label or r.device]
        if any("CPU" not in d.upper() for d in devices):
            log.warning("%s: TFLite models run on the CPU; placement %s ignored", path, devices)
        return load_tflite(name, version, path, tflite)
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
