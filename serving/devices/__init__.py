"""Per-model device placement: which GPU/CPU each model version runs on.

- config.py: the --device_config_file text proto, validated with pydantic;
- host.py: the devices this process can use (CUDA_VISIBLE_DEVICES, cpu_devices);
- plan.py: config + host → per-model SessionOptions (one per replica), the
  process-wide GPU layout, start-up errors naming unknown devices;
- replicated.py: one Servable over several per-device replicas.
"""

from serving.devices.config import DeviceConfig, DeviceConfigError, Placement, load_device_config
from serving.devices.host import HostDevices
from serving.devices.plan import PlacementPlan
from serving.devices.replicated import ReplicatedServable

__all__ = [
    "DeviceConfig",
    "DeviceConfigError",
    "HostDevices",
    "Placement",
    "PlacementPlan",
    "ReplicatedServable",
    "load_device_config",
]
