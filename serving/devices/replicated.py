"""One model version on several devices: a replica (session) per device.

Each request goes to the replica with the fewest calls in flight, ties
broken round-robin, so concurrent requests and batches spread across the
devices while a lone caller still alternates between them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from serving.servables.base import Servable
from serving.servables.signature import Signature


class ReplicatedServable(Servable):
    def __init__(self, replicas: Sequence[Servable]) -> None:
        if not replicas:
            raise ValueError("ReplicatedServable needs at least one replica")
        first = replicas[0]
        super().__init__(
            first.name,
            first.version,
            first.path,
            first.signature_defs,
            first.default_signature,
            ",".join(r.device for r in replicas),
        )
        self.replicas = list(replicas)
        self.devices = tuple(r.device for r in replicas)
        self._inflight = [0] * len(replicas)
        # Calls each replica has served; read by tests and diagnostics.
        self.runs = [0] * len(replicas)
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def _pick(self) -> int:
        with self._lock:
            start = next(self._turn) % len(self.replicas)
            order = [(start + i) % len(self.replicas) for i in range(len(self.replicas))]
            index = min(order, key=lambda i: self._inflight[i])
            self._inflight[index] += 1
            self.runs[index] += 1
            return index

    def run(
        self,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        index = self._pick()
        try:
            return self.replicas[index].run(signature, inputs, output_aliases)
        finally:
            with self._lock:
                self._inflight[index] -= 1

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
