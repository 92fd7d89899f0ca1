"""Command-line flags, spelled and parsed as `tensorflow_model_server` does.

Each setting is defined once, as a field of `ServerOptions`: its name is the
flag's spelling, and `flag()` gives its default, help text, whether it is inert
(accepted for compatibility, no effect) and any alias. The parser, `--help`
and README's flags table are all generated from those fields.

TF Serving uses tensorflow::Flags: `--name=value`, booleans as `--name`,
`--name=true|false|1|0`. We also take `--name value` for non-booleans, which
users type by habit.

Adding a flag: one field in `ServerOptions`, e.g.
`cache_dir: str = flag("", "Where downloaded models are cached.")` (pydantic
constraints such as `ge=0` go in the same call), then regenerate README's table
with `python -m serving.flags --readme README.md`.
"""

from __future__ import annotations

import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REST_DEFAULT_MAX_BODY = 64 * 1024 * 1024


class FlagError(ValueError):
    """A flag was unknown, malformed, or had an invalid value."""


def flag(
    default: Any,
    help: str,
    *,
    inert: bool = False,
    aliases: tuple[str, ...] = (),
    **constraints: Any,
) -> Any:
    """A `ServerOptions` field that is also a command-line flag.

    `inert`: accepted so TF Serving command lines keep working, but has no effect
    here (shown as such in `--help` and README). `aliases`: other spellings of the
    same flag. `constraints`: pydantic's (`ge`, `le`, ...).
    """
    extra = {"inert": inert, "aliases": list(aliases)}
    return Field(default, description=help, json_schema_extra=extra, **constraints)  # type: ignore[arg-type]


class ServerOptions(BaseModel):
    """Validated server settings; each field is the flag of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = flag(
        8500,
        "TCP port to listen on for gRPC/HTTP API. Disabled if port set to zero.",
        ge=0,
        le=65535,
    )
    grpc_socket_path: str = flag(
        "", "If non-empty, listen to a UNIX socket for gRPC API on the given path."
    )
    rest_api_port: int = flag(
        0,
        "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be exported.",
        ge=0,
        le=65535,
    )
    rest_api_num_threads: int = flag(
        0,
        "Number of threads for HTTP/REST API processing. REST runs on the gRPC event loop "
        "and model calls on the shared executor (--grpc_max_threads).",
        ge=0,
        inert=True,
    )
    rest_api_timeout_in_ms: int = flag(30000, "Timeout for HTTP/REST API calls.", ge=0)
    rest_api_enable_cors_support: bool = flag(False, "Enable CORS headers in REST API.")
    enable_batching: bool = flag(False, "enable batching")
    allow_version_labels_for_unavailable_models: bool = flag(
        False,
        "If true, allows assigning unused version labels to models that are not available yet.",
    )
    batching_parameters_file: str = flag(
        "",
        "If non-empty, read an ascii BatchingParameters protobuf from the supplied file name "
        "and use the contained values instead of the defaults.",
    )
    enable_per_model_batching_parameters: bool = flag(
        False,
        "Read batching_params.pbtxt from each model version's directory when batching is on.",
        aliases=("enable_per_model_batching_params",),
    )
    model_config_file: str = flag(
        "",
        "If non-empty, read an ascii ModelServerConfig protobuf from the supplied file name, "
        "and serve the models in that file.",
    )
    model_config_file_poll_wait_seconds: int = flag(
        0,
        "Interval in seconds between each poll of the model config file (0 = read once).",
        ge=0,
    )
    model_name: str = flag("default", "name of model (ignored if --model_config_file flag is set)")
    model_base_path: str = flag(
        "", "path to export (ignored if --model_config_file flag is set, otherwise required)"
    )
    num_load_threads: int = flag(
        0, "The number of threads used to load models (0 = a small pool).", ge=0
    )
    num_unload_threads: int = flag(
        0,
        "The number of threads used to unload models; unloads share the load pool.",
        ge=0,
        inert=True,
    )
    max_num_load_retries: int = flag(
        5,
        "maximum number of times it retries loading a model after the first failure, "
        "before giving up.",
        ge=0,
    )
    load_retry_interval_micros: int = flag(
        60_000_000, "The interval, in microseconds, between each servable load retry.", ge=0
    )
    file_system_poll_wait_seconds: int = flag(
        1,
        "Interval in seconds between each poll of the filesystem for new model version "
        "(0 = poll once).",
        ge=0,
    )
    flush_filesystem_caches: bool = flag(
        True, "Flush file system caches after the initial load of all servables.", inert=True
    )
    model_cache_dir: str = flag(
        "",
        "Local folder where versions from object storage (s3://, gs://, az://) are downloaded "
        "once and reused across restarts ('' = model-server-cache under the temp dir).",
    )
    tensorflow_session_parallelism: int = flag(
        0,
        "Number of threads to use for running a Tensorflow session "
        "(sets intra and inter op parallelism when those are 0).",
        ge=0,
    )
    tensorflow_session_config_file: str = flag(
        "",
        "If non-empty, read an ascii TensorFlow ConfigProto from the file "
        "and use it for every session.",
    )
    tensorflow_intra_op_parallelism: int = flag(
        0,
        "Number of threads to use to parallelize the execution of an individual op (0 = auto).",
        ge=0,
    )
    tensorflow_inter_op_parallelism: int = flag(
        0,
        "Controls the number of operators that can be executed simultaneously (0 = auto).",
        ge=0,
    )
    use_alts_credentials: bool = flag(
        False, "Use Google ALTS credentials. Not supported: refused if set."
    )
    ssl_config_file: str = flag(
        "", "If non-empty, read an ascii SSLConfig protobuf and serve gRPC over TLS."
    )
    platform_config_file: str = flag(
        "", "Platform config file; only the TensorFlow platform is served.", inert=True
    )
    per_process_gpu_memory_fraction: float = flag(
        0.0,
        "Fraction that each process occupies of the GPU memory space (0 = TensorFlow's default).",
        ge=0.0,
        le=1.0,
    )
    saved_model_tags: str = flag(
        "serve",
        "Comma-separated set of tags corresponding to the meta graph def to load from SavedModel.",
    )
    grpc_channel_arguments: str = flag(
        "",
        "A comma separated list of arguments to be passed to the grpc server "
        "(e.g. grpc.max_connection_age_ms=2000).",
    )
    grpc_max_threads: int = flag(
        0, "Max gRPC server threads to handle gRPC messages (0 = default).", ge=0
    )
    enable_model_warmup: bool = flag(
        True,
        "Enables model warmup, which triggers lazy initializations "
        "(such as TF optimizations) at load time.",
    )
    num_request_iterations_for_warmup: int = flag(
        1, "Number of times a warmup request is run.", ge=0
    )
    monitoring_config_file: str = flag(
        "", "If non-empty, read an ascii MonitoringConfig protobuf from the supplied file name."
    )
    remove_unused_fields_from_bundle_metagraph: bool = flag(
        True, "Drop unused fields of the loaded MetaGraphDef to save memory.", inert=True
    )
    prefer_tflite_model: bool = flag(
        False,
        "Prefer TensorFlow Lite model from `model.tflite` file in SavedModel directory, "
        "instead of the TensorFlow model from `saved_model.pb` file. If no TensorFlow Lite "
        "model found, fallback to TensorFlow model.",
    )
    enable_signature_method_name_check: bool = flag(
        False,
        "Enable method_name check for SignatureDef. "
        "Disable this if serving native TF2 regression/classification models.",
    )
    xla_cpu_compilation_enabled: bool = flag(False, "Enable XLA:CPU JIT compilation.", inert=True)
    enable_profiler: bool = flag(
        True, "Enable profiler service (tensorflow.ProfilerService on the gRPC port)."
    )
    skip_initialize_tpu: bool = flag(False, "Skip TPU initialization.", inert=True)
    mixed_precision: str = flag("", "Mixed precision mode (e.g. bfloat16).", inert=True)
    version: bool = flag(False, "Display version")
    enable_serialization_as_tensor_content: bool = flag(
        False, "Write Predict outputs as tensor_content instead of typed fields."
    )
    enable_grpc_healthcheck_service: bool = flag(
        True, "Serve grpc.health.v1 on the gRPC port; it is always served.", inert=True
    )
    num_tflite_pools: int = flag(
        0,
        "Number of TFLite interpreters serving each TFLite model concurrently "
        "(0 = number of CPUs).",
        ge=0,
    )
    num_tflite_interpreters_per_pool: int = flag(
        1,
        "Above 1, a TFLite request with many rows runs split into mini-batches of "
        "ceil(500/N) rows in parallel.",
        ge=0,
    )
    thread_pool_factory_config_file: str = flag(
        "", "Thread pool factory config for the inter/intra-op pools.", inert=True
    )
    xla_gpu_compilation_enabled: bool = flag(False, "Enable XLA:GPU JIT compilation.", inert=True)
    # Our own flags (not in tensorflow_model_server).
    device_config_file: str = flag("", "Per-model device assignment (GPU/CPU) file; see README.")
    log_format: Literal["text", "json"] = flag("text", "Log line format: text or json.")
    log_level: Literal["debug", "info", "warning", "error"] = flag(
        "info", "Log level: debug, info, warning or error."
    )
    drain_timeout_seconds: float = flag(
        30.0, "On SIGTERM, how long to wait for in-flight requests.", ge=0.0
    )
    max_request_bytes: int = flag(
        0,
        "Largest request accepted over gRPC and REST (0 = 2 GiB for gRPC, gRPC's limit; "
        "REST: see --rest_api_max_request_bytes).",
        ge=0,
    )
    rest_api_max_request_bytes: int = flag(
        0,
        "Largest HTTP/REST request body; larger gets 413 (0 = --max_request_bytes when set, "
        "else 64 MiB).",
        ge=0,
    )
    rest_api_host: str = flag(
        "0.0.0.0",
        "Address the HTTP/REST API binds (e.g. 127.0.0.1 for a sidecar; :: for IPv6).",
        min_length=1,
    )
    rest_api_idle_timeout_seconds: float = flag(
        75.0, "Close an HTTP/REST connection idle this long between requests (0 = never).", ge=0.0
    )
    rest_api_read_timeout_seconds: float = flag(
        60.0,
        "An HTTP/REST request (headers and body) must arrive within this time of its first "
        "byte, else 408 (0 = no limit).",
        ge=0.0,
    )
    rest_api_max_connections: int = flag(
        0,
        "Open HTTP/REST connections allowed; more are answered 503 and closed "
        "(0 = half the open-file limit, at most 10000).",
        ge=0,
    )
    max_tensor_elements: int = flag(
        100_000_000,
        "Most elements any request tensor may expand to (a single typed value fills its "
        "whole shape) and any response tensor may have; larger ones are refused before "
        "anything is allocated. 0 = no limit.",
        ge=0,
    )
    grpc_max_concurrent_rpcs: int = flag(
        1024,
        "Most gRPC calls handled at once; further calls get RESOURCE_EXHAUSTED at once "
        "instead of queueing. 0 = no limit.",
        ge=0,
    )
    custom_op_libraries: str = flag(
        "", "Comma-separated TensorFlow op libraries (.so) to load at start-up, before any model."
    )

    @field_validator("grpc_channel_arguments")
    @classmethod
    def _channel_args_parse(cls, value: str) -> str:
        parse_channel_arguments(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerOptions:
        if self.use_alts_credentials:
            raise ValueError("--use_alts_credentials is not supported by this server")
        return self

    @property
    def tags(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.saved_model_tags.split(",") if t.strip())

    @property
    def per_model_batching(self) -> bool:
        return self.enable_per_model_batching_parameters

    @property
    def intra_op_threads(self) -> int:
        return self.tensorflow_intra_op_parallelism or self.tensorflow_session_parallelism

    @property
    def inter_op_threads(self) -> int:
        return self.tensorflow_inter_op_parallelism or self.tensorflow_session_parallelism

    @property
    def op_libraries(self) -> list[str]:
        return [p.strip() for p in self.custom_op_libraries.split(",") if p.strip()]

    @property
    def max_message_bytes(self) -> int:
        # TF Serving lets gRPC messages go up to INT_MAX.
        return self.max_request_bytes or (2**31 - 1)

    @property
    def rest_max_body_bytes(self) -> int:
        # JSON costs several times its size in memory once parsed: a REST body
        # gets a tighter default than a gRPC message.
        return self.rest_api_max_request_bytes or self.max_request_bytes or REST_DEFAULT_MAX_BODY

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


@dataclass(frozen=True)
class Flag:
    """One command-line spelling of a `ServerOptions` field (derived, never written by hand)."""

    name: str
    field: str  # the ServerOptions field it sets (differs from name for an alias)
    kind: type  # bool, int, float or str
    default: Any
    help: str
    inert: bool = False


def _kind(annotation: Any) -> type:
    if typing.get_origin(annotation) is Literal:
        return str  # pydantic checks the choice
    if annotation in (bool, int, float, str):
        return typing.cast(type, annotation)
    raise TypeError(f"a flag must be bool, int, float, str or a Literal of str: {annotation}")


def _flags() -> tuple[Flag, ...]:
    out: list[Flag] = []
    for name, field in ServerOptions.model_fields.items():
        extra = field.json_schema_extra
        if not isinstance(extra, dict):
            raise TypeError(f"ServerOptions.{name} must be declared with flag(...)")
        kind, inert = _kind(field.annotation), bool(extra["inert"])
        help_text = field.description or ""
        out.append(Flag(name, name, kind, field.default, help_text, inert))
        for alias in typing.cast(list[str], extra["aliases"]):
            out.append(Flag(alias, name, kind, field.default, f"Same as --{name}.", inert))
    return tuple(out)


FLAGS: tuple[Flag, ...] = _flags()
_BY_NAME = {f.name: f for f in FLAGS}
_TRUE = {"true", "1", "t", "yes"}
_FALSE = {"false", "0", "f", "no"}
_KIND_NAMES = {bool: "bool", int: "int64", float: "float", str: "string"}


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
        values[flag.field] = _convert(flag, raw)
    try:
        return ServerOptions(**values)
    except ValueError as exc:
        raise FlagError(str(exc)) from None


def _default_text(flag: Flag) -> str:
    return str(flag.default).lower() if flag.kind is bool else repr(flag.default)


INERT_NOTE = "[no effect: accepted for compatibility]"


def usage() -> str:
    lines = ["usage: model-server [flags]", "Flags:"]
    for flag in FLAGS:
        help_text = f"{INERT_NOTE} {flag.help}" if flag.inert else flag.help
        lines.append(
            f"\t--{flag.name}={_default_text(flag)}\t{_KIND_NAMES[flag.kind]}\t{help_text}"
        )
    return "\n".join(lines)


README_BEGIN = "<!-- flags table: generated by `python -m serving.flags --readme README.md` -->"
README_END = "<!-- end of flags table -->"


def readme_table() -> str:
    """README's flags table, between its markers."""
    rows = [README_BEGIN, "| flag | default | meaning |", "|---|---|---|"]
    for flag in FLAGS:
        meaning = flag.help.replace("|", "\\|")
        if flag.inert:
            meaning = f"**No effect** (accepted for compatibility). {meaning}"
        rows.append(f"| `--{flag.name}` | `{_default_text(flag)}` | {meaning} |")
    rows.append(README_END)
    return "\n".join(rows)


def update_readme(path: Path) -> bool:
    """Rewrite the table between the markers; True if the file changed."""
    text = path.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: flags table markers not found")
    new = pattern.sub(lambda _m: readme_table(), text)
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":  # pragma: no cover - developer tool
    if sys.argv[1:2] == ["--readme"] and len(sys.argv) == 3:
        changed = update_readme(Path(sys.argv[2]))
        print(f"{sys.argv[2]}: flags table {'updated' if changed else 'already current'}")
    else:
        print(usage())
