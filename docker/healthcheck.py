"""Docker HEALTHCHECK for the model-server image.

Healthy means *ready*: the REST readiness endpoint ``/v1/health/ready`` answers
200, i.e. every configured model has an available version and the server is not
draining. (Kubernetes does not use this; it probes the endpoints directly, see
deploy/.)

The REST port is read from the server's own command line (``/proc/1/cmdline``,
the server is PID 1's child under tini or PID 1 itself), so
``docker run IMAGE --rest_api_port=9001`` stays healthy. When REST is disabled
(``--rest_api_port=0``) the gRPC health service on ``--port`` is asked instead.

Standard library only on the REST path; exit 0 = healthy, 1 = unhealthy, as
Docker expects.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

DEFAULT_GRPC_PORT = 8500
DEFAULT_REST_PORT = 8501
READY_PATH = "/v1/health/ready"
TIMEOUT_S = float(os.environ.get("HEALTHCHECK_TIMEOUT_SECONDS", "3"))


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """Last value of ``--name=V`` / ``--name V`` (absl style, one or two dashes)."""
    value = None
    for i, arg in enumerate(argv):
        for prefix in (f"--{name}", f"-{name}"):
            if arg == prefix and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(prefix + "="):
                value = arg[len(prefix) + 1 :]
    return value


def ports_from_argv(argv: Sequence[str]) -> tuple[int, int]:
    """(grpc_port, rest_api_port) as the server would see them."""
    grpc_port = int(_flag_value(argv, "port") or DEFAULT_GRPC_PORT)
    rest_port = int(_flag_value(argv, "rest_api_port") or DEFAULT_REST_PORT)
    return grpc_port, rest_port


def is_server_argv(argv: Sequence[str]) -> bool:
    """``.../model-server ...`` (console script) or ``python -m serving ...``."""
    head = list(argv[:3])
    return any(os.path.basename(a) == "model-server" for a in head) or (
        len(head) >= 3 and head[1:3] == ["-m", "serving"]
    )


def server_argv(proc: str = "/proc") -> list[str]:
    """Command line of the model-server process (PID 1, or tini's child)."""
    try:
        pids = sorted((p for p in os.listdir(proc) if p.isdigit()), key=int)
    except OSError:
        return []
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if is_server_argv(argv):
            return argv
    return []


def rest_ready(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{READY_PATH}", timeout=TIMEOUT_S) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def grpc_serving(port: int, host: str = "127.0.0.1") -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: Sequence[str] | None = None) -> int:
    grpc_port, rest_port = ports_from_argv(server_argv() if argv is None else argv)
    ok = rest_ready(rest_port) if rest_port > 0 else grpc_serving(grpc_port)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
