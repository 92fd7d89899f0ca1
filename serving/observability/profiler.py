"""TensorFlow's profiler service (`tensorflow.ProfilerService`) on the gRPC port.

TF Serving registers TensorFlow's ProfilerService on `--port`, so TensorBoard's
"capture profile" and `tf.profiler.experimental.client.trace` record a trace
of the serving process. Rather than re-implement that service (its protos are
not shipped to Python, and its semantics — where the XSpace is written, how
Terminate ends a session — are TensorFlow's), TensorFlow's own C++ profiler
server runs on an internal port and this handler forwards the service's
unary calls to it as raw bytes, whatever the method.

It costs nothing until used: the internal server starts on the first
profiler call. TensorFlow's profiler server offers no bind address and
listens on every interface; `--enable_profiler=false` keeps it closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import grpc

log = logging.getLogger(__name__)

SERVICE = "tensorflow.ProfilerService"
_PREFIX = f"/{SERVICE}/"
_READY_TIMEOUT_S = 10.0


def _unused_port() -> int:
    # The profiler server binds [::]:port and reports no chosen port back, so
    # one is picked here (the OS's ephemeral pick, released just before use).
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
            return s.getsockname()[1]
    except OSError:  # no IPv6 here: gRPC binds the IPv4 wildcard instead
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", 0))
            return s.getsockname()[1]


def _start_tf_profiler_server() -> int:
    import tensorflow as tf

    port = _unused_port()
    tf.profiler.experimental.server.start(port)
    return port


class ProfilerProxy(grpc.GenericRpcHandler):
    """Forwards `tensorflow.ProfilerService/*` to TensorFlow's profiler server."""

    def __init__(self, start: Callable[[], int] = _start_tf_profiler_server) -> None:
        self._start = start
        self._channel: grpc.aio.Channel | None = None
        self._lock = asyncio.Lock()

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(_PREFIX):
            return None
        # No (de)serializers: request and response stay raw bytes.
        return grpc.unary_unary_rpc_method_handler(self._forwarder(method))

    def _forwarder(
        self, method: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            channel = await self._ready_channel(context)
            try:
                return await channel.unary_unary(method)(request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise  # unreachable: abort raises

        return forward

    async def _ready_channel(self, context: grpc.aio.ServicerContext) -> grpc.aio.Channel:
        async with self._lock:
            if self._channel is None:
                channel: grpc.aio.Channel | None = None
                try:
                    port = await asyncio.to_thread(self._start)
                    channel = grpc.aio.insecure_channel(
                        f"127.0.0.1:{port}",
                        options=[
                            ("grpc.max_receive_message_length", -1),
                            ("grpc.max_send_message_length", -1),
                        ],
                    )
                    await asyncio.wait_for(channel.channel_ready(), _READY_TIMEOUT_S)
                except Exception as exc:
                    # Most likely the picked port was taken meanwhile: the
                    # next call starts one on another port.
                    if channel is not None:
                        await channel.close()
                    log.error("TensorFlow profiler server did not start: %r", exc)
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "profiler service could not start"
                    )
                    raise  # unreachable: abort raises
                log.info("TensorFlow profiler server started on internal port %d", port)
                self._channel = channel
            return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def add_profiler_service(server: grpc.aio.Server) -> ProfilerProxy:
    proxy = ProfilerProxy()
    server.add_generic_rpc_handlers((proxy,))
    return proxy
