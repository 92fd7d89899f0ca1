"""Device config + host devices + flags → how each model's sessions are built.

What TensorFlow lets us control, and where (see docs/devices.md):
- per session: the device a graph is placed on, thread pools, the number of
  logical CPU devices (`device_count`);
- per process: GPU allocators. The first session touching a GPU fixes its
  allocator (memory fraction, growth, virtual devices) for the process. So
  every session here gets the *same* GPU options, computed once: a model with
  `memory_limit_mb` gets a virtual GPU of that size carved out of its
  physical GPU, which caps that model's versions together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from tensorflow.core.protobuf import config_pb2

from serving.devices.config import (
    DeviceConfig,
    DeviceConfigError,
    Placement,
    device_kind,
)
from serving.devices.host import HostDevices
from serving.servables.session_bundle import SessionOptions

log = logging.getLogger(__name__)

DEFAULT_KEY = "<default>"  # the pool of models the config does not list


@dataclass(frozen=True)
class PlacementPlan:
    config: DeviceConfig
    host: HostDevices
    base: SessionOptions  # from the flags; device fields filled per model
    default: Placement
    # Per visible GPU, the memory limits (MiB) of its virtual devices;
    # empty = the whole GPU as one device.
    gpu_layout: tuple[tuple[int, ...], ...] = ()
    # (model key, "/GPU:n") → TensorFlow device of that model's virtual GPU.
    _virtual: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        config: DeviceConfig | None,
        host: HostDevices,
        base: SessionOptions,
    ) -> PlacementPlan:
        """Validate everything a start-up can check; raise DeviceConfigError."""
        explicit = config is not None
        config = config or DeviceConfig()
        if config.cpu_devices != host.cpus:
            host = replace(host, cpus=config.cpu_devices)
        default = config.default or Placement(
            devices=("/GPU:0",) if host.gpus else ("/CPU:0",),
            # No device config at all: TF Serving's behaviour (export pins kept).
            keep_export_devices=not explicit,
        )
        entries = {**config.models, DEFAULT_KEY: default}
        for key, placement in entries.items():
            for device in placement.devices:
                if not host.has(device):
                    who = "the default placement" if key == DEFAULT_KEY else f"model {key!r}"
                    hint = (
                        " (raise cpu_devices to split the CPU into more logical devices)"
                        if device_kind(device) == "CPU"
                        else ""
                    )
                    raise DeviceConfigError(
                        f"device {device} assigned to {who} does not exist on this host "
                        f"({host.describe()}){hint}"
                    )
        limited = any(p.memory_limit_mb for p in entries.values())
        if limited and base.gpu_memory_fraction:
            raise DeviceConfigError(
                "--per_process_gpu_memory_fraction cannot be combined with memory_limit_mb in "
                "the device config (TensorFlow rejects both at once); use one of them"
            )
        layout, virtual = _gpu_layout(entries, host.gpus)
        return cls(config, host, base, default, layout, virtual)

    def base_config(self) -> config_pb2.ConfigProto:
        """The ConfigProto every session starts from (same GPU options for all)."""
        config = config_pb2.ConfigProto()
        config.CopyFrom(self.base.base_config)
        if self.host.cpus > 1:
            config.device_count["CPU"] = self.host.cpus
        if any(self.gpu_layout):
            virtual = config.gpu_options.experimental.virtual_devices
            del virtual[:]
            for limits in self.gpu_layout:
                virtual.add().memory_limit_mb.extend(float(m) for m in limits)
        return config

    def placement(self, model: str) -> Placement:
        return self.config.models.get(model, self.default)

    def session_options(self, model: str) -> list[SessionOptions]:
        """One SessionOptions per replica (device) of `model`."""
        placement = self.placement(model)
        key = model if model in self.config.models else DEFAULT_KEY
        growth = self.config.allow_growth
        base = replace(
            self.base,
            base_config=self.base_config(),
            allow_growth=growth if growth is not None else self.base.allow_growth,
            clear_devices=not placement.keep_export_devices,
        )
        return [
            replace(base, device=self._virtual.get((key, device), device), device_label=device)
            for device in placement.devices
        ]

    def session_config(self, model: str = DEFAULT_KEY) -> config_pb2.ConfigProto:
        """The ConfigProto `model`'s sessions get (first replica), for logs and checks."""
        return self.session_options(model)[0].config_proto()

    def describe(self, models: Iterable[str] = ()) -> str:
        names = dict.fromkeys([*models, *self.config.models])
        parts = [f"{m} → {','.join(self.placement(m).devices)}" for m in names]
        parts.append(f"others → {','.join(self.default.devices)}")
        return "; ".join(parts)

    def eager_setup(self) -> None:
        """Mirror the layout in TF2's eager context (object-graph fallback loader).

        Must run before the eager context initialises its devices; if it
        already has (in-process tests), the fallback loader keeps one CPU.
        """
        import tensorflow as tf

        try:
            if self.host.cpus > 1:
                cpu = tf.config.list_physical_devices("CPU")[0]
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * self.host.cpus
                )
            gpus = tf.config.list_physical_devices("GPU")
            for gpu, limits in zip(gpus, self.gpu_layout, strict=False):
                if limits:
                    tf.config.set_logical_device_configuration(
                        gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=m) for m in limits]
                    )
                elif self.config.allow_growth:
                    tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:
            log.warning("eager devices already initialised; layout not mirrored: %s", exc)


def _gpu_layout(
    entries: dict[str, Placement], gpus: int
) -> tuple[tuple[tuple[int, ...], ...], dict[tuple[str, str], str]]:
    """Virtual GPUs for capped models; TF numbers them in order, GPU by GPU."""
    layout: list[tuple[int, ...]] = []
    virtual: dict[tuple[str, str], str] = {}
    next_id = 0
    for gpu in range(gpus):
        name = f"/GPU:{gpu}"
        users = [(key, p) for key, p in entries.items() if name in p.gpus]
        capped = [(key, p.memory_limit_mb) for key, p in users if p.memory_limit_mb]
        uncapped = [key for key, p in users if not p.memory_limit_mb]
        if capped and uncapped:
            raise DeviceConfigError(
                f"{name}: models {', '.join(sorted(k for k, _ in capped))} set memory_limit_mb "
                f"but {', '.join(sorted(uncapped))} do not; on one GPU set it for every model "
                "(and the default) or for none"
            )
        if not capped:
            layout.append(())
            for key, _ in users:
                virtual[(key, name)] = f"/device:GPU:{next_id}"
            next_id += 1
            continue
        layout.append(tuple(limit for _, limit in capped))
        for key, _ in capped:
            virtual[(key, name)] = f"/device:GPU:{next_id}"
            next_id += 1
    return tuple(layout), virtual
