"""TF2 SavedModels the Session loader cannot restore, via tf.saved_model.load.

Some TF2 exports (a Keras 3 model tracked by a bare tf.Module, for one) hold
two resource handles per variable: the checkpoint restores one, the
signature functions capture the other, and only TF2's object-graph loader
joins them. The Session loader notices uninitialised variables after
restoring and hands such models here. Its signature functions cost several
times a Session callable per call, so this is the fallback, not the default.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from serving.servables.base import DEFAULT_SERVING_SIGNATURE, LoadError, Servable
from serving.servables.session_bundle import SessionOptions, read_meta_graph, status_from_tf_error
from serving.servables.signature import Signature

log = logging.getLogger(__name__)


class ObjectGraphServable(Servable):
    def __init__(self, name: str, version: int, path: str, options: SessionOptions) -> None:
        meta_graph = read_meta_graph(path, options.tags)
        device = options.device or None
        try:
            with tf.device(device):
                self._loaded = tf.saved_model.load(path, tags=sorted(options.tags))
        except Exception as exc:
            raise LoadError(f"{type(exc).__name__}: {exc}") from exc
        self._lock = threading.Lock()
        self._device = device
        super().__init__(
            name,
            version,
            path,
            meta_graph.signature_def,
            DEFAULT_SERVING_SIGNATURE,
            options.device_label or options.device,
        )
        log.info("%s: loaded with the TF2 object-graph loader", path)

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        function = self._loaded.signatures[signature.key]
        try:
            with tf.device(self._device):
                result = function(**{a: tf.convert_to_tensor(v) for a, v in inputs.items()})
        except tf.errors.OpError as exc:
            raise status_from_tf_error(exc) from None
        return {alias: result[alias].numpy() for alias in output_aliases}

    def close(self) -> None:
        self._loaded = None
