"""Local server processes for the bench, and the small gRPC client it checks with."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OBJECT_GRAPH_LOG = "loaded with the TF2 object-graph loader"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class LocalServer:
    """`python -m serving` on free loopback ports, its log in a file."""

    def __init__(self, label: str, flags: list[str], log_dir: Path) -> None:
        self.label = label
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.log_path = log_dir / f"server-{label}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                f"--port={self.grpc_port}",
                f"--rest_api_port={self.rest_port}",
                *flags,
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str | None:
        """None when this server build has no REST endpoint yet."""
        if port_open("127.0.0.1", self.rest_port):
            return f"http://127.0.0.1:{self.rest_port}"
        return None

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server {self.label} exited:\n{self.logs()[-3000:]}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Client:
    """A plain tensorflow-serving-api client: readiness, sample checks, reloads."""

    def __init__(self, target: str) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, model, version: int | None = None, name: str | None = None, timeout=10.0):
        """One Predict of the model's bench row; returns the output row."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = name or model.name
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[model.input_name].CopyFrom(tf.make_tensor_proto(model.row[None]))
        response = self.predict_stub.Predict(request, timeout=timeout)
        return response, tf.make_ndarray(response.outputs[model.output_name])[0]

    def available(self, name: str) -> set[int]:
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = self.model_stub.GetModelStatus(request, timeout=5)
        except grpc.RpcError:
            return set()
        ok = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return {s.version for s in response.model_version_status if s.state == ok}

    def wait_available(self, names: list[str], timeout: float, check=lambda: None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            check()
            pending = [n for n in pending if not self.available(n)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"models not AVAILABLE after {timeout}s: {pending[:5]}")
            if pending:
                time.sleep(0.1)

    def reload_config(self, config_text: str) -> None:
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2
        from tensorflow_serving.config import model_server_config_pb2

        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(config_text, request.config)
        assert isinstance(request.config, model_server_config_pb2.ModelServerConfig)
        response = self.model_stub.HandleReloadConfigRequest(request, timeout=600)
        if response.status.error_code:
            raise RuntimeError(f"reload failed: {response.status.error_message}")

    def close(self) -> None:
        self.channel.close()


def models_config(models: Mapping[str, Path | str], extra: Mapping[str, str] | None = None) -> str:
    """A TF Serving model config file's text; `extra` adds fields to a model's entry."""
    extra = extra or {}
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow"'
        f"{' ' + extra[name] if extra.get(name) else ''} }}\n"
        for name, path in models.items()
    )
    return f"model_config_list {{\n{entries}}}\n"
