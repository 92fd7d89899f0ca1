"""The model list: TF Serving's ModelServerConfig text proto → validated models.

The text proto is parsed with the message tensorflow-serving-api ships, so any
file TF Serving accepts parses here; pydantic then checks what the proto
cannot (unique names, non-empty paths, a supported platform).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tensorflow_serving.config import model_server_config_pb2

from serving.config.version_policy import AllPolicy, LatestPolicy, SpecificPolicy, VersionPolicy
from serving.errors import ConfigError

__all__ = ["ConfigError", "ModelConfig", "ServerModels", "load_file", "parse_text", "single_model"]

SUPPORTED_PLATFORMS = ("tensorflow",)


class ModelConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    base_path: str = Field(min_length=1)
    platform: str = "tensorflow"
    version_policy: VersionPolicy = LatestPolicy()
    version_labels: dict[str, int] = Field(default_factory=dict)

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, value: str) -> str:
        value = value or "tensorflow"
        if value not in SUPPORTED_PLATFORMS:
            raise ValueError(f"unsupported model_platform {value!r} (supported: tensorflow)")
        return value

    @field_validator("version_labels")
    @classmethod
    def _labels_valid(cls, labels: dict[str, int]) -> dict[str, int]:
        for label, version in labels.items():
            if not label:
                raise ValueError("empty version label")
            if version < 0:
                raise ValueError(f"version label {label!r} points at negative version {version}")
        return labels


class ServerModels(BaseModel):
    model_config = ConfigDict(frozen=True)

    models: tuple[ModelConfig, ...]

    @field_validator("models")
    @classmethod
    def _unique(cls, models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"duplicate model name {model.name!r}")
            seen.add(model.name)
        return models

    def by_name(self) -> dict[str, ModelConfig]:
        return {m.name: m for m in self.models}


def _policy(proto: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    which = proto.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        return AllPolicy()
    if which == "specific":
        return SpecificPolicy(versions=frozenset(proto.model_version_policy.specific.versions))
    if which == "latest":
        # TF Serving treats num_versions 0 as 1.
        return LatestPolicy(num_versions=max(1, proto.model_version_policy.latest.num_versions))
    return LatestPolicy()


def from_proto(config: model_server_config_pb2.ModelServerConfig) -> ServerModels:
    which = config.WhichOneof("config")
    if which == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    models = []
    for proto in config.model_config_list.config:
        if proto.model_type:
            raise ConfigError(f"model {proto.name!r}: model_type is deprecated; use model_platform")
        models.append(
            ModelConfig(
                name=proto.name,
                base_path=proto.base_path,
                platform=proto.model_platform or "tensorflow",
                version_policy=_policy(proto),
                version_labels=dict(proto.version_labels),
            )
        )
    return ServerModels(models=tuple(models))


def parse_text(text: str, source: str = "<config>") -> ServerModels:
    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        # TF Serving's wording (protobuf's text parser's), which operators' scripts look for.
        raise ConfigError(
            f"Error parsing text-format {proto.DESCRIPTOR.full_name}: {source}: {exc}"
        ) from None
    try:
        return from_proto(proto)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_file(path: str) -> ServerModels:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read model config file: {exc.strerror}") from None
    return parse_text(text, path)


def single_model(name: str, base_path: str) -> ServerModels:
    try:
        return ServerModels(models=(ModelConfig(name=name, base_path=base_path),))
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", exc)).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg
