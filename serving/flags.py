"""Command-line flags, spelled and parsed as `tensorflow_model_server` does.

TF Serving uses tensorflow::Flags: `--name=value`, booleans as `--name`,
`--name=true|false|1|0`. We also take `--name value` for non-booleans, which
users type by habit. Every flag maps onto a field of `ServerOptions`, so the
parsed result is validated by pydantic in one place.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FlagError(ValueError):
    """A flag was unknown, malformed, or had an invalid value."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: type  # bool, int, float or str
    default: Any
    help: str
    # Accepted for compatibility with tensorflow_model_server; has no effect here.
    inert: bool = False


FLAGS: tuple[Flag, ...] = (
    Flag(
        "port", int, 8500, "TCP port to listen on for gRPC/HTTP API. Disabled if port set to zero."
    ),
    Flag(
        "grpc_socket_path",
        str,
        "",
        "If non-empty, listen to a UNIX socket for gRPC API on the given path.",
    ),
    Flag(
        "rest_api_port",
        int,
        0,
        "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be exported.",
    ),
    Flag(
        "rest_api_num_threads",
        int,
        0,
        "Number of threads for HTTP/REST API processing (0 = number of CPUs); see README.",
    ),
    Flag("rest_api_timeout_in_ms", int, 30000, "Timeout for HTTP/REST API calls."),
    Flag("rest_api_enable_cors_support", bool, False, "Enable CORS headers in REST API."),
    Flag("enable_batching", bool, False, "enable batching"),
    Flag(
        "allow_version_labels_for_unavailable_models",
        bool,
        False,
        "If true, allows assigning unused version labels to models that are not available yet.",
    ),
    Flag(
        "batching_parameters_file",
        str,
        "",
        "If non-empty, read an ascii BatchingParameters protobuf from the supplied file name and use the contained values instead of the defaults.",
    ),
    Flag(
        "enable_per_model_batching_parameters",
        bool,
        False,
        "Read batching_params.pbtxt from each model version's directory when batching is on "
        "(TF Serving's spelling).",
    ),
    Flag(
        "enable_per_model_batching_params",
        bool,
        False,
        "Same as --enable_per_model_batching_parameters (TF Serving's option field name).",
    ),
    Flag(
        "model_config_file",
        str,
        "",
        "If non-empty, read an ascii ModelServerConfig protobuf from the supplied file name, and serve the models in that file.",
    ),
    Flag(
        "model_config_file_poll_wait_seconds",
        int,
        0,
        "Interval in seconds between each poll of the model config file (0 = read once).",
    ),
    Flag(
        "model_name", str, "default", "name of model (ignored if --model_config_file flag is set)"
    ),
    Flag(
        "model_base_path",
        str,
        "",
        "path to export (ignored if --model_config_file flag is set, otherwise required)",
    ),
    Flag(
        "num_load_threads", int, 0, "The number of threads used to load models (0 = a small pool)."
    ),
    Flag(
        "num_unload_threads",
        int,
        0,
        "Accepted for compatibility; unloads share the load pool.",
        inert=True,
    ),
    Flag(
        "max_num_load_retries",
        int,
        5,
        "maximum number of times it retries loading a model after the first failure, before giving up.",
    ),
    Flag(
        "load_retry_interval_micros",
        int,
        60_000_000,
        "The interval, in microseconds, between each servable load retry.",
    ),
    Flag(
        "file_system_poll_wait_seconds",
        int,
        1,
        "Interval in seconds between each poll of the filesystem for new model version (0 = poll once).",
    ),
    Flag("flush_filesystem_caches", bool, True, "Accepted for compatibility.", inert=True),
    Flag(
        "tensorflow_session_parallelism",
        int,
        0,
        "Number of threads to use for running a Tensorflow session (sets intra and inter op parallelism when those are 0).",
    ),
    Flag(
        "tensorflow_session_config_file",
        str,
        "",
        "If non-empty, read an ascii TensorFlow ConfigProto from the file and use it for every session.",
    ),
    Flag(
        "tensorflow_intra_op_parallelism",
        int,
        0,
        "Number of threads to use to parallelize the execution of an individual op (0 = auto).",
    ),
    Flag(
        "tensorflow_inter_op_parallelism",
        int,
        0,
        "Controls the number of operators that can be executed simultaneously (0 = auto).",
    ),
    Flag("use_alts_credentials", bool, False, "Not supported; rejected if set.", inert=True),
    Flag(
        "ssl_config_file",
        str,
        "",
        "If non-empty, read an ascii SSLConfig protobuf and serve gRPC over TLS.",
    ),
    Flag(
        "platform_config_file",
        str,
        "",
        "Accepted for compatibility; only the TensorFlow platform is served.",
        inert=True,
    ),
    Flag(
        "per_process_gpu_memory_fraction",
        float,
        0.0,
        "Fraction that each process occupies of the GPU memory space (0 = TensorFlow's default).",
    ),
    Flag(
        "saved_model_tags",
        str,
        "serve",
        "Comma-separated set of tags corresponding to the meta graph def to load from SavedModel.",
    ),
    Flag(
        "grpc_channel_arguments",
        str,
        "",
        "A comma separated list of arguments to be passed to the grpc server (e.g. grpc.max_connection_age_ms=2000).",
    ),
    Flag(
        "grpc_max_threads", int, 0, "Max gRPC server threads to handle gRPC messages (0 = default)."
    ),
    Flag(
        "enable_model_warmup",
        bool,
        True,
        "Enables model warmup, which triggers lazy initializations (such as TF optimizations) at load time.",
    ),
    Flag("num_request_iterations_for_warmup", int, 1, "Number of times a warmup request is run."),
    Flag(
        "monitoring_config_file",
        str,
        "",
        "If non-empty, read an ascii MonitoringConfig protobuf from the supplied file name.",
    ),
    Flag(
        "remove_unused_fields_from_bundle_metagraph",
        bool,
        True,
        "Accepted for compatibility.",
        inert=True,
    ),
    Flag(
        "prefer_tflite_model",
        bool,
        False,
        "Not supported: TFLite models are not served.",
        inert=True,
    ),
    Flag(
        "enable_signature_method_name_check",
        bool,
        False,
        "Enable method_name check for SignatureDef. Disable this if serving native TF2 regression/classification models.",
    ),
    Flag("xla_cpu_compilation_enabled", bool, False, "Accepted for compatibility.", inert=True),
    Flag("enable_profiler", bool, True, "Accepted for compatibility.", inert=True),
    Flag("skip_initialize_tpu", bool, False, "Accepted for compatibility.", inert=True),
    Flag("mixed_precision", str, "", "Accepted for compatibility.", inert=True),
    Flag("version", bool, False, "Display version"),
    Flag(
        "enable_serialization_as_tensor_content",
        bool,
        False,
        "Write Predict outputs as tensor_content instead of typed fields.",
    ),
    Flag(
        "enable_grpc_healthcheck_service",
        bool,
        True,
        "Serve grpc.health.v1 on the gRPC port (always on here).",
        inert=True,
    ),
    Flag("num_tflite_pools", int, 0, "Not supported: TFLite models are not served.", inert=True),
    Flag(
        "num_tflite_interpreters_per_pool",
        int,
        1,
        "Not supported: TFLite models are not served.",
        inert=True,
    ),
    Flag("thread_pool_factory_config_file", str, "", "Accepted for compatibility.", inert=True),
    Flag("xla_gpu_compilation_enabled", bool, False, "Accepted for compatibility.", inert=True),
    # Our own flags (not in tensorflow_model_server).
    Flag("device_config_file", str, "", "Per-model device assignment (GPU/CPU) file; see README."),
    Flag("log_format", str, "text", "Log line format: text or json."),
    Flag("log_level", str, "info", "Log level: debug, info, warning or error."),
    Flag(
        "drain_timeout_seconds", float, 30.0, "On SIGTERM, how long to wait for in-flight requests."
    ),
    Flag(
        "max_request_bytes",
        int,
        0,
        "Largest request accepted over gRPC and REST (0 = 2 GiB, gRPC's limit).",
    ),
    Flag(
        "rest_api_host",
        str,
        "0.0.0.0",
        "Address the HTTP/REST API binds (e.g. 127.0.0.1 for a sidecar; :: for IPv6).",
    ),
    Flag(
        "rest_api_idle_timeout_seconds",
        float,
        75.0,
        "Close an HTTP/REST connection idle this long between requests (0 = never).",
    ),
    Flag(
        "rest_api_read_timeout_seconds",
        float,
        60.0,
        "An HTTP/REST request (headers and body) must arrive within this time of its first byte, else 408 (0 = no limit).",
    ),
    Flag(
        "rest_api_max_connections",
        int,
        0,
        "Open HTTP/REST connections allowed; more are answered 503 and closed (0 = half the open-file limit, at most 10000).",
    ),
)

_BY_NAME = {f.name: f for f in FLAGS}
_TRUE = {"true", "1", "t", "yes"}
_FALSE = {"false", "0", "f", "no"}


class ServerOptions(BaseModel):
    """Validated server settings; one field per flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(8500, ge=0, le=65535)
    grpc_socket_path: str = ""
    rest_api_port: int = Field(0, ge=0, le=65535)
    rest_api_num_threads: int = Field(0, ge=0)
    rest_api_timeout_in_ms: int = Field(30000, ge=0)
    rest_api_enable_cors_support: bool = False
    enable_batching: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    batching_parameters_file: str = ""
    enable_per_model_batching_parameters: bool = False
    enable_per_model_batching_params: bool = False
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = Field(0, ge=0)
    model_name: str = "default"
    model_base_path: str = ""
    num_load_threads: int = Field(0, ge=0)
    num_unload_threads: int = Field(0, ge=0)
    max_num_load_retries: int = Field(5, ge=0)
    load_retry_interval_micros: int = Field(60_000_000, ge=0)
    file_system_poll_wait_seconds: int = Field(1, ge=0)
    flush_filesystem_caches: bool = True
    tensorflow_session_parallelism: int = Field(0, ge=0)
    tensorflow_session_config_file: str = ""
    tensorflow_intra_op_parallelism: int = Field(0, ge=0)
    tensorflow_inter_op_parallelism: int = Field(0, ge=0)
    use_alts_credentials: bool = False
    ssl_config_file: str = ""
    platform_config_file: str = ""
    per_process_gpu_memory_fraction: float = Field(0.0, ge=0.0, le=1.0)
    saved_model_tags: str = "serve"
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = Field(0, ge=0)
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = Field(1, ge=0)
    monitoring_config_file: str = ""
    remove_unused_fields_from_bundle_metagraph: bool = True
    prefer_tflite_model: bool = False
    enable_signature_method_name_check: bool = False
    xla_cpu_compilation_enabled: bool = False
    enable_profiler: bool = True
    skip_initialize_tpu: bool = False
    mixed_precision: str = ""
    version: bool = False
    enable_serialization_as_tensor_content: bool = False
    enable_grpc_healthcheck_service: bool = True
    num_tflite_pools: int = Field(0, ge=0)
    num_tflite_interpreters_per_pool: int = Field(1, ge=0)
    thread_pool_factory_config_file: str = ""
    xla_gpu_compilation_enabled: bool = False
    device_config_file: str = ""
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_timeout_seconds: float = Field(30.0, ge=0.0)
    max_request_bytes: int = Field(0, ge=0)
    rest_api_host: str = Field("0.0.0.0", min_length=1)
    rest_api_idle_timeout_seconds: float = Field(75.0, ge=0.0)
    rest_api_read_timeout_seconds: float = Field(60.0, ge=0.0)
    rest_api_max_connections: int = Field(0, ge=0)

    @field_validator("grpc_channel_arguments")
    @classmethod
    def _channel_args_parse(cls, value: str) -> str:
        parse_channel_arguments(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerOptions:
        if self.use_alts_credentials:
            raise ValueError("--use_alts_credentials is not supported by this server")
        if self.prefer_tflite_model:
            raise ValueError("--prefer_tflite_model is not supported: TFLite models are not served")
        return self

    @property
    def tags(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.saved_model_tags.split(",") if t.strip())

    @property
    def per_model_batching(self) -> bool:
        return self.enable_per_model_batching_parameters or self.enable_per_model_batching_params

    @property
    def intra_op_threads(self) -> int:
        return self.tensorflow_intra_op_parallelism or self.tensorflow_session_parallelism

    @property
    def inter_op_threads(self) -> int:
        return self.tensorflow_inter_op_parallelism or self.tensorflow_session_parallelism

    @property
    def max_message_bytes(self) -> int:
        # TF Serving lets gRPC messages go up to INT_MAX.
        return self.max_request_bytes or (2**31 - 1)

    @property
    def channel_arguments(self) -> list[tuple[str, int | str]]:
        return parse_channel_arguments(self.grpc_channel_arguments)


def parse_channel_arguments(value: str) -> list[tuple[str, int | str]]:
    """`a=1,b=x` → [("a", 1), ("b", "x")], integers as TF Serving converts them."""
    args: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            args.append((key.strip(), int(raw)))
        except ValueError:
            args.append((key.strip(), raw.strip()))
    return args


def _convert(flag: Flag, raw: str) -> Any:
    if flag.kind is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise FlagError(f"--{flag.name}: expected true or false, got {raw!r}")
    try:
        return flag.kind(raw)
    except ValueError:
        raise FlagError(f"--{flag.name}: expected {flag.kind.__name__}, got {raw!r}") from None


def parse_flags(argv: list[str]) -> ServerOptions:
    """Parse argv (without the program name) into validated options."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unexpected argument {arg!r}; flags are spelled --name=value")
        name, sep, raw = arg.lstrip("-").partition("=")
        flag = _BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"unknown command line flag '{name}'")
        if not sep:
            if flag.kind is bool:
                raw = "true"
            elif i < len(argv):
                raw = argv[i]
                i += 1
            else:
                raise FlagError(f"--{name} needs a value")
        values[name] = _convert(flag, raw)
    try:
        return ServerOptions(**values)
    except ValueError as exc:
        raise FlagError(str(exc)) from None


def usage() -> str:
    lines = ["usage: model-server [flags]", "Flags:"]
    for flag in FLAGS:
        kind = {bool: "bool", int: "int64", float: "float", str: "string"}[flag.kind]
        default = str(flag.default).lower() if flag.kind is bool else repr(flag.default)
        lines.append(f"\t--{flag.name}={default}\t{kind}\t{flag.help}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual inspection
    print(usage(), file=sys.stderr)
