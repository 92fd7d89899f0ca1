"""Start the real server as a process and talk to it with real clients."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

REPO = Path(__file__).resolve().parent.parent
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
# The kserve SDK's own virtualenv (its protobuf pin clashes with TensorFlow's).
KSERVE_VENV_PYTHON = REPO / ".venv-kserve" / "bin" / "python"


def kserve_python() -> Path:
    """The interpreter that runs the kserve SDK's scripts, made by `make install-test`."""
    assert KSERVE_VENV_PYTHON.exists(), "no .venv-kserve: run `make install-test`"
    return KSERVE_VENV_PYTHON


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval=0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class BackgroundLoad:
    """Clients calling `call` in a loop while the block runs, for hot-swap tests.

    Records every value seen, when each was first seen, how many calls
    succeeded and every gRPC failure as "CODE: details".
    """

    def __init__(self, call: Callable[[], float], clients: int, pause_s: float = 0.0) -> None:
        self.seen: set[float] = set()
        self.first_seen: dict[float, float] = {}
        self.failures: list[str] = []
        self.count = 0
        self._call = call
        self._pause_s = pause_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                value = self._call()
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code()}: {exc.details()}")
            else:
                with self._lock:
                    self.seen.add(value)
                    self.first_seen.setdefault(value, time.monotonic())
                    self.count += 1
            if self._pause_s:
                time.sleep(self._pause_s)

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class ServerProcess:
    """`python -m serving` on free loopback ports, logs captured to a file."""

    def __init__(
        self,
        *flags: str,
        log_dir: Path,
        grpc_port: int | None = None,
        rest_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.grpc_port = grpc_port if grpc_port is not None else free_port()
        self.rest_port = rest_port if rest_port is not None else free_port()
        self.log_path = log_dir / f"server-{self.grpc_port}.log"
        self.flags = [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", *flags]
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **(env or {}),
        }
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", *self.flags],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.grpc_port}",
            options=[
                ("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20),
            ],
        )
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    @property
    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Until the gRPC port answers."""

        def up() -> bool:
            self.check_alive()
            grpc.channel_ready_future(self.channel).result(timeout=0.5)
            return True

        wait_for(up, timeout, f"gRPC port {self.grpc_port}\n{self.logs}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs}")

    def status(self, model: str, version: int | None = None):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        return self.model_stub.GetModelStatus(request, timeout=10)

    def versions(self, model: str, state=AVAILABLE) -> set[int]:
        try:
            response = self.status(model)
        except grpc.RpcError:
            return set()
        return {s.version for s in response.model_version_status if s.state == state}

    def wait_available(
        self, model: str, versions: Iterable[int] | None = None, timeout: float = 60.0
    ) -> None:
        wanted = set(versions) if versions is not None else None

        def ready() -> bool:
            self.check_alive()
            got = self.versions(model)
            return bool(got) and (wanted is None or got == wanted)

        wait_for(ready, timeout, f"{model} versions {wanted} AVAILABLE\n{self.logs}")

    def predict(
        self,
        model: str,
        inputs: dict[str, np.ndarray | tf.Tensor],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
        output_filter: Iterable[str] = (),
        timeout: float = 10.0,
    ):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        return self.predict_stub.Predict(request, timeout=timeout)

    @contextlib.contextmanager
    def running(
        self, *models: str, versions: Mapping[str, Iterable[int]] | None = None
    ) -> Iterator[ServerProcess]:
        """Up, with `models` (and `versions`' exact versions) AVAILABLE; stopped after."""
        try:
            self.wait_serving()
            for name in models:
                self.wait_available(name)
            for name, numbers in (versions or {}).items():
                self.wait_available(name, numbers)
            yield self
        finally:
            self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.channel.close()
        self._log.close()
        return self.proc.returncode


def output(response, name: str) -> np.ndarray:
    return tf.make_ndarray(response.outputs[name])
