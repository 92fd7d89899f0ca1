"""The devices this process can place models on."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class HostDevices:
    """Visible GPUs (after CUDA_VISIBLE_DEVICES) and logical CPU devices."""

    gpus: int
    cpus: int = 1

    @classmethod
    def detect(cls, cpu_devices: int = 1) -> HostDevices:
        # Lists physical devices only: logical/virtual device settings can
        # still be applied afterwards. TF itself honours CUDA_VISIBLE_DEVICES.
        import tensorflow as tf

        return cls(gpus=len(tf.config.list_physical_devices("GPU")), cpus=cpu_devices)

    @property
    def names(self) -> list[str]:
        return [f"/CPU:{i}" for i in range(self.cpus)] + [f"/GPU:{i}" for i in range(self.gpus)]

    def has(self, device: str) -> bool:
        return device in self.names

    def describe(self) -> str:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        cuda = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        return f"devices here: {', '.join(self.names)}{cuda}"
