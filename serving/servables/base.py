"""The interface every loaded model version offers to the layers above."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import LoadError
from serving.servables.signature import Signature

__all__ = ["LoadError", "Servable"]

DEFAULT_SERVING_SIGNATURE = "serving_default"
HUB_DEFAULT_SIGNATURE = "default"


class Servable(abc.ABC):
    """One loaded model version.

    `run` is thread-safe and blocking; callers run it off the event loop.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
        default_signature: str,
        device: str,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.device = device
        self.default_signature = default_signature
        # Kept as protos: GetModelMetadata returns them verbatim.
        self.signature_defs = dict(signature_defs)
        self.signatures: dict[str, Signature] = {
            key: Signature.from_proto(key, sig) for key, sig in self.signature_defs.items()
        }
        # What the layers above keep per loaded version (runner statistics,
        # pre-bound metrics), keyed by their own object: it goes when the
        # version does, and a plain dict is cheaper per request than a
        # WeakKeyDictionary keyed by the servable.
        self.memo: dict[object, Any] = {}

    @abc.abstractmethod
    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Run `signature` on `inputs` (alias → array) and return the chosen outputs."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model's memory; no `run` call is in flight."""
