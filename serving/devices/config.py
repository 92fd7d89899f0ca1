"""The --device_config_file: a DeviceConfig text proto, checked by pydantic.

Text proto because TF Serving users already write --model_config_file that
way; pydantic because the rules (device syntax, limits only on GPUs, no
duplicate models) belong in one place with readable errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from google.protobuf import text_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.errors import DeviceConfigError

_DEVICE = re.compile(r"^/?(?:device:)?(CPU|GPU):(\d+)$", re.IGNORECASE)


def canonical_device(name: str) -> str:
    """'/device:gpu:1', 'GPU:1', '/GPU:1' → '/GPU:1'; anything else is an error."""
    match = _DEVICE.match(name.strip())
    if not match:
        raise ValueError(f"invalid device name {name!r}: expected /GPU:<n> or /CPU:<n>")
    return f"/{match.group(1).upper()}:{int(match.group(2))}"


def device_kind(device: str) -> str:
    return device[1:4]


def device_index(device: str) -> int:
    return int(device.rsplit(":", 1)[1])


class Placement(BaseModel):
    """Where one model's versions run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: tuple[str, ...] = Field(min_length=1)
    memory_limit_mb: int = Field(0, ge=0)
    allow_growth: bool | None = None
    keep_export_devices: bool = False

    @field_validator("devices", mode="before")
    @classmethod
    def _canonical(cls, value: Iterable[str]) -> tuple[str, ...]:
        devices = tuple(canonical_device(d) for d in value)
        duplicates = sorted({d for d in devices if devices.count(d) > 1})
        if duplicates:
            raise ValueError(f"device listed twice: {', '.join(duplicates)}")
        return devices

    @model_validator(mode="after")
    def _limits_on_gpus(self) -> Placement:
        cpus = [d for d in self.devices if device_kind(d) == "CPU"]
        if self.memory_limit_mb and cpus:
            raise ValueError(
                f"memory_limit_mb applies to GPUs only; TensorFlow cannot cap {', '.join(cpus)}"
            )
        if self.keep_export_devices and len(self.devices) > 1:
            raise ValueError("keep_export_devices needs exactly one device (replicas re-place)")
        return self

    @property
    def gpus(self) -> tuple[str, ...]:
        return tuple(d for d in self.devices if device_kind(d) == "GPU")


class DeviceConfig(BaseModel):
    """The whole file; `default` None = first GPU if any, else /CPU:0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_devices: int = Field(1, ge=1, le=256)
    default: Placement | None = None
    models: dict[str, Placement] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_growth_setting(self) -> DeviceConfig:
        # GPUOptions.allow_growth is read by the first session that touches a
        # GPU and then holds for the whole process (GPUProcessState caches
        # one allocator per GPU), so differing values would be a lie.
        placements = [*self.models.values(), *([self.default] if self.default else [])]
        values = {p.allow_growth for p in placements if p.gpus and p.allow_growth is not None}
        if len(values) > 1:
            raise ValueError(
                "allow_growth differs between models; TensorFlow applies GPU memory growth "
                "to the whole process, so set it the same everywhere"
            )
        return self

    @property
    def allow_growth(self) -> bool | None:
        placements = [*self.models.values(), *([self.default] if self.default else [])]
        values = {p.allow_growth for p in placements if p.gpus and p.allow_growth is not None}
        return values.pop() if values else None


def _placement(message: Message) -> dict[str, object]:
    return {
        "devices": list(message.devices),
        "memory_limit_mb": message.memory_limit_mb,
        "allow_growth": message.allow_growth if message.HasField("allow_growth") else None,
        "keep_export_devices": message.keep_export_devices,
    }


def parse_device_config(text: str, source: str = "device config") -> DeviceConfig:
    from serving.protos import DeviceConfigProto

    proto = DeviceConfigProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise DeviceConfigError(f"{source}: not a valid DeviceConfig text proto: {exc}") from None
    models: dict[str, dict] = {}
    for entry in proto.models:
        if not entry.name:
            raise DeviceConfigError(f"{source}: a models entry has no name")
        if entry.name in models:
            raise DeviceConfigError(f"{source}: model {entry.name!r} is listed twice")
        models[entry.name] = _placement(entry)
    try:
        return DeviceConfig(
            cpu_devices=proto.cpu_devices or 1,
            default=_placement(proto.default) if proto.HasField("default") else None,
            models=models,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise DeviceConfigError(f"{source}: {problems}") from None


def load_device_config(path: str) -> DeviceConfig:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise DeviceConfigError(f"cannot read device config {path}: {exc.strerror}") from None
    return parse_device_config(text, path)
