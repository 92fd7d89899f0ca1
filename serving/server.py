"""Wires sources → manager → servables → inference → APIs, and runs them."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.api.grpc.services import (
    ActiveCalls,
    ModelServicer,
    PredictionServicer,
    add_services,
)
from serving.api.rest import start_rest
from serving.api.rest.http import Handler, HttpServer, Request, Response
from serving.api.v2.rest import V2Rest
from serving.api.v2.service import V2Service
from serving.api.v2.servicer import add_v2_service
from serving.batching import BatchingRunner, runner_from_flags
from serving.config.model_config import ServerModels, load_file, single_model
from serving.config.text_proto import read_text_proto
from serving.core import ServerCore
from serving.devices import HostDevices, PlacementPlan, load_device_config
from serving.errors import (
    BatchingConfigError,
    ConfigError,
    DeviceConfigError,
    LoadError,
    StartupError,
    TextProtoError,
)
from serving.flags import ServerOptions
from serving.inference.runner import DirectRunner, Runner
from serving.inference.service import InferenceService
from serving.manager.heap import HeapFreezer
from serving.manager.manager import ServableManager
from serving.observability import Observability
from serving.observability import metrics as batch_metrics
from serving.observability.http import HttpResponse
from serving.observability.metrics import StorageHooks
from serving.observability.profiler import ProfilerProxy, add_profiler_service
from serving.protos import SSLConfig
from serving.repository import ModelRepository
from serving.servables.base import Servable
from serving.servables.loader import load_placed
from serving.servables.ops import OpLibraryError, load_op_libraries
from serving.servables.session_bundle import SessionOptions
from serving.servables.tflite import TfLiteOptions
from serving.servables.warmup import warmup
from serving.sources.poller import FileSystemSource
from serving.storage import StorageError, Storages, set_download_observer

log = logging.getLogger("serving")

# gRPC core holds the calls that arrive faster than the event loop picks them
# up, and past grpc.server.max_pending_requests (1000 by default) it starts
# cancelling them: CANCELLED, which clients do not retry, before any of our
# code runs. A burst of 2000 calls on one connection did that. Streams past a
# connection's grpc.max_concurrent_streams are refused instead (UNAVAILABLE,
# retryable), so that per-connection cap stays well under the pending limits;
# once picked up, calls past --grpc_max_concurrent_rpcs get RESOURCE_EXHAUSTED.
# --grpc_channel_arguments overrides any of these.
GRPC_STREAMS_PER_CONNECTION = 4096
GRPC_CORE_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_concurrent_streams", GRPC_STREAMS_PER_CONNECTION),
    ("grpc.server.max_pending_requests", 4 * GRPC_STREAMS_PER_CONNECTION),
    ("grpc.server.max_pending_requests_hard_limit", 8 * GRPC_STREAMS_PER_CONNECTION),
]


def check_options(options: ServerOptions) -> None:
    """Cross-flag rules, with TF Serving's wording."""
    if not options.model_config_file and not options.model_base_path:
        raise StartupError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if options.batching_parameters_file and not options.enable_batching:
        raise StartupError(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    if options.tensorflow_session_parallelism and (
        options.tensorflow_intra_op_parallelism and options.tensorflow_inter_op_parallelism
    ):
        raise StartupError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all."
        )
    if options.port and options.rest_api_port == options.port:
        raise StartupError(
            "server_options.http_port cannot be same as grpc_port. Please use a different "
            "port for HTTP/REST API."
        )


def initial_models(options: ServerOptions) -> ServerModels:
    if options.model_config_file:
        return load_file(options.model_config_file)
    base_path = options.model_base_path
    return single_model(
        options.model_name, base_path if "://" in base_path else os.path.abspath(base_path)
    )


def session_options(options: ServerOptions) -> SessionOptions:
    base = config_pb2.ConfigProto()
    if options.tensorflow_session_config_file:
        try:
            read_text_proto(options.tensorflow_session_config_file, base)
        except TextProtoError as exc:
            raise StartupError(str(exc)) from None
    return SessionOptions(
        tags=options.tags,
        intra_op_threads=options.intra_op_threads,
        inter_op_threads=options.inter_op_threads,
        gpu_memory_fraction=options.per_process_gpu_memory_fraction,
        base_config=base,
    )


def placement_plan(options: ServerOptions, base: SessionOptions) -> PlacementPlan:
    """Read --device_config_file and check it against this host's devices."""
    try:
        path = options.device_config_file
        config = load_device_config(path) if path else None
        host = HostDevices.detect(config.cpu_devices if config else 1)
        return PlacementPlan.build(config, host, base)
    except DeviceConfigError as exc:
        raise StartupError(str(exc)) from None


def _repository_read_only(options: ServerOptions) -> str:
    """Why V2's repository extension may not change models ("" when it may)."""
    if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
        return (
            "the model repository is read-only: this server polls "
            f"--model_config_file={options.model_config_file}, which decides the models it serves"
        )
    return ""


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("model-server")
    except PackageNotFoundError:
        return ""


def _rest_handler(endpoint: Callable[[], HttpResponse]) -> Handler:
    async def handle(request: Request) -> Response:
        answer = endpoint()
        return Response(answer.status, answer.body, answer.content_type)

    return handle


class ModelServer:
    """One process: the manager, the version source, and the API servers."""

    def __init__(self, options: ServerOptions) -> None:
        check_options(options)
        self.options = options
        try:
            load_op_libraries(options.op_libraries)
        except OpLibraryError as exc:
            raise StartupError(str(exc)) from None
        try:
            self.initial_models = initial_models(options)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        self._session_options = session_options(options)
        self._tflite = TfLiteOptions(
            prefer_tflite_model=options.prefer_tflite_model,
            interpreters=options.num_tflite_pools,
            interpreters_per_pool=options.num_tflite_interpreters_per_pool,
        )
        try:
            self.obs = Observability(options)  # metrics, health, logs, drain
        except TextProtoError as exc:
            raise StartupError(str(exc)) from None
        self.placement = placement_plan(options, self._session_options)
        self.placement.eager_setup()
        log.info(
            "device placement: %s",
            self.placement.describe(m.name for m in self.initial_models.models),
        )
        log.info(
            "session config: %s",
            text_format.MessageToString(self.placement.session_config(), as_one_line=True),
        )
        self.manager = ServableManager(
            self.obs.wrap_loader(self.load),
            max_load_retries=options.max_num_load_retries,
            load_retry_interval_s=options.load_retry_interval_micros / 1e6,
            load_threads=options.num_load_threads or 2,
            allow_labels_for_unavailable=options.allow_version_labels_for_unavailable_models,
            on_transition=self.obs.on_transition,
        )
        self.heap = HeapFreezer()  # keeps full GC pauses off the request path
        self.manager.add_listener(self.heap)
        # Object-storage versions are downloaded here by the load threads.
        self.storages = Storages(options.model_cache_dir or None)
        set_download_observer(StorageHooks())
        self.source = FileSystemSource(
            self.manager, options.file_system_poll_wait_seconds, self.storages
        )
        self.core = ServerCore(self.manager, self.source)
        self.executor = ThreadPoolExecutor(
            max_workers=options.grpc_max_threads or max(8, 4 * (os.cpu_count() or 1)),
            thread_name_prefix="run",
        )
        self.batching: BatchingRunner | None = None
        if options.enable_batching:
            try:
                self.batching = runner_from_flags(
                    options.batching_parameters_file,
                    options.per_model_batching,
                    self.executor,
                    metrics=batch_metrics,
                    inflight=lambda: self.obs.observer.inflight,
                )
            except BatchingConfigError as exc:
                raise StartupError(str(exc)) from None
        self.runner: Runner = self.obs.wrap_runner(self.batching or DirectRunner(self.executor))
        self.observer = self.obs.observer
        self.service = InferenceService(
            self.manager,
            self.runner,
            observer=self.observer,
            reload_config=self._reload_config,
            method_name_check=options.enable_signature_method_name_check,
        )
        self.obs.bind(lambda: self.core.models, self.manager)
        self.v2 = V2Service(
            self.service,
            ready=lambda: self.obs.health.state()[0] == "ready",
            repository=ModelRepository(self.core, read_only_reason=_repository_read_only(options)),
            version=_package_version(),
        )
        self._grpc: grpc.aio.Server | None = None
        self.grpc_calls = ActiveCalls()
        self._profiler: ProfilerProxy | None = None
        self.grpc_addresses: list[str] = []
        # The REST server; others add routes to it.
        self.http: HttpServer | None = None

    def load(self, name: str, version: int, location: str) -> Servable:
        try:
            # Downloads a remote version or fetches a handle once, on this load thread.
            path = self.storages.local_path(location)
        except StorageError as exc:
            code = getattr(exc, "code", 14)  # a handle's own status, else UNAVAILABLE
            raise LoadError(str(exc), code=code) from None
        servable = load_placed(
            name, version, path, self.placement.session_options(name), self._tflite
        )
        if self.batching is not None:
            try:
                self.batching.prepare(servable)  # reads batching_params.pbtxt if enabled
            except BatchingConfigError as exc:
                servable.close()
                raise LoadError(str(exc), code=3) from None  # 3 = INVALID_ARGUMENT
        if self.options.enable_model_warmup:
            try:
                # Each replica (device) of a replicated version warms itself.
                for replica in getattr(servable, "replicas", (servable,)):
                    warmup(replica, self.options.num_request_iterations_for_warmup)
            except BaseException:
                servable.close()
                raise
        return servable

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        opts = self.options
        self.core.apply(self.initial_models, require_absolute=bool(opts.model_config_file))
        if opts.model_config_file:
            self.core.remember_text(opts.model_config_file)
            self.core.watch_file(opts.model_config_file, opts.model_config_file_poll_wait_seconds)
        self.source.start()
        await self._start_grpc()
        await self._start_rest()
        await self.obs.started(self)

    async def _start_grpc(self) -> None:
        opts = self.options
        if not opts.port and not opts.grpc_socket_path:
            return
        limit = opts.max_message_bytes
        # One value per key, the flag's last: gRPC core keeps the first it sees.
        channel_options = list(
            dict(
                [
                    ("grpc.max_receive_message_length", limit),
                    ("grpc.max_send_message_length", limit),
                    ("grpc.so_reuseport", 0),
                    *GRPC_CORE_OPTIONS,
                    *opts.channel_arguments,
                ]
            ).items()
        )
        server = grpc.aio.server(
            options=channel_options,
            # Past this, calls get RESOURCE_EXHAUSTED at once rather than queueing.
            maximum_concurrent_rpcs=opts.grpc_max_concurrent_rpcs or None,
        )
        prediction = PredictionServicer(
            self.service,
            tensor_content=opts.enable_serialization_as_tensor_content,
            max_tensor_elements=opts.max_tensor_elements,
        )
        model = ModelServicer(self.service)
        add_services(server, prediction, model, self.grpc_calls)
        add_v2_service(server, self.v2, self.grpc_calls)
        self.obs.add_grpc_services(server)
        if opts.enable_profiler:
            self._profiler = add_profiler_service(server)
        addresses = []
        if opts.port:
            addresses.append(f"0.0.0.0:{opts.port}")
        if opts.grpc_socket_path:
            addresses.append(f"unix:{opts.grpc_socket_path}")
        credentials = self._server_credentials()
        for address in addresses:
            try:
                if credentials is not None:
                    bound = server.add_secure_port(address, credentials)
                else:
                    bound = server.add_insecure_port(address)
            except RuntimeError:
                bound = 0
            if not bound and not address.startswith("unix:"):
                raise StartupError(f"could not bind gRPC to {address} (port in use?)")
        await server.start()
        self._grpc = server
        self.grpc_addresses = addresses
        for address in addresses:
            log.info("Running gRPC ModelServer at %s ...", address)

    async def _start_rest(self) -> None:
        """TF Serving's REST API on --rest_api_port, on this same event loop."""
        self.http = await start_rest(self.options, self.service, self.observer)
        if self.http is not None:
            timeout_s = self.options.rest_api_timeout_in_ms / 1000.0 or None
            V2Rest(self.v2, timeout_s).mount(self.http)
            # Probes and the metrics page share the REST port (as in TF Serving).
            for path, endpoint in self.obs.endpoints.routes().items():
                self.http.add_route("GET", path, _rest_handler(endpoint))

    def _server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS from --ssl_config_file (TF Serving's SSLConfig: PEM contents, not paths)."""
        path = self.options.ssl_config_file
        if not path:
            return None
        try:
            config = read_text_proto(path, SSLConfig())
        except TextProtoError as exc:
            raise StartupError(str(exc)) from None
        if not config.server_key or not config.server_cert:
            raise StartupError(f"{path}: server_key and server_cert are required")
        return grpc.ssl_server_credentials(
            [(config.server_key.encode(), config.server_cert.encode())],
            root_certificates=config.custom_ca.encode() or None,
            require_client_auth=config.client_verify,
        )

    async def _reload_config(self, proto: model_server_config_pb2.ModelServerConfig) -> None:
        await asyncio.to_thread(self.core.reload, proto, 600.0)

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, unload everything."""
        grace = self.options.drain_timeout_seconds
        await self.obs.drain(self._grpc, grace, http=self.http, grpc_calls=self.grpc_calls)
        self.core.stop()
        self.source.stop()
        self.heap.close()  # the process is ending: no reclaim per unload
        await asyncio.to_thread(self.manager.shutdown, grace)
        if self.batching is not None:
            self.batching.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._profiler is not None:
            await self._profiler.close()
