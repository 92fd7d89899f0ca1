"""Real load generators: `wrk` for REST, `h2load` for unary gRPC.

h2load cannot see gRPC's status: it lives in trailers (or in a trailers-only
response) under HTTP 200, which h2load counts as success. A failed gRPC call
carries no response message, though, and h2load reports the exact DATA bytes
it received when run without --warm-up-time. So every successful response
adds exactly one framed PredictResponse (whose size a Python client measures
first) and errors = done - data_bytes / frame_size. The bench proves this on a
deliberately bad request (unknown model) against each endpoint, every run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel

LUA_SCRIPT = Path(__file__).resolve().parent / "lua" / "post.lua"
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
# A unary gRPC call as h2load sends it: these headers and a pre-framed body.
H2LOAD_GRPC = ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d"]
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client"}  # binary → Debian package


class ToolMissing(RuntimeError):
    pass


def ensure_tools(install: bool) -> None:
    """Install wrk / h2load with apt-get when missing (and allowed), else say exactly what."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = [TOOLS[t] for t in missing]
        print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
        cmd = ["apt-get", "install", "-y", "-q", *packages]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(cmd, capture_output=True)
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(TOOLS[t] for t in missing)
        raise ToolMissing(
            f"load generator(s) not found: {', '.join(missing)}; "
            f"install the Debian package(s): apt-get install -y {packages}"
        )


class LoadResult(BaseModel):
    tool: str
    requests: int
    errors: int
    seconds: float
    rps: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


def _prefix(pin_cpus: str | None) -> list[str]:
    return ["taskset", "-c", pin_cpus] if pin_cpus else []


def h2load_grpc(
    url: str,
    body: Path,
    concurrency: int,
    seconds: float,
    frame_bytes: int,
    pin_cpus: str | None = None,
    path: str = PREDICT_PATH,
) -> LoadResult:
    """Unary gRPC calls (Predict, or the method `path` names) at `concurrency`
    outstanding calls for `seconds`.

    Up to 16 HTTP/2 connections, the rest as concurrent streams on them
    (as gRPC clients multiplex); a separate warm-up run comes first because
    --warm-up-time would add its traffic to the byte count errors come from.
    """
    clients = min(concurrency, 16)
    streams = max(1, concurrency // clients)
    base = [
        *_prefix(pin_cpus),
        "h2load",
        "-t1",
        f"-c{clients}",
        f"-m{streams}",
        *H2LOAD_GRPC,
        str(body),
    ]
    target = url.rstrip("/") + path
    subprocess.run([*base, f"-D{max(100, int(seconds * 250))}ms", target], capture_output=True)
    with tempfile.NamedTemporaryFile(suffix=".tsv") as log:
        out = _run([*base, f"-D{int(seconds * 1000)}ms", f"--log-file={log.name}", target])
        durations = np.loadtxt(log.name, usecols=2, ndmin=1, dtype=np.float64)
    return _h2load_result(out, durations, frame_bytes)


def h2load_count(
    url: str, body: Path, requests: int, frame_bytes: int, path: str = PREDICT_PATH
) -> LoadResult:
    """A fixed number of calls (for checks, not measurements)."""
    cmd = [
        "h2load",
        "-t1",
        f"-n{requests}",
        f"-c{min(requests, 4)}",
        *H2LOAD_GRPC,
        str(body),
        url.rstrip("/") + path,
    ]
    return _h2load_result(_run(cmd), np.zeros(0), frame_bytes)


def _h2load_result(out: str, durations_us: np.ndarray, frame_bytes: int) -> LoadResult:
    finished = re.search(r"finished in ([\d.]+)(m?s)", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    data = re.search(r"traffic: .*?, \S+ \((\d+)\) data", out)
    if not (finished and counts and data):
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    done, succeeded = int(counts[3]), int(counts[4])
    complete_messages = int(data[1]) // frame_bytes
    errors = (done - succeeded) + max(0, succeeded - complete_messages)
    errors += int(counts[6]) + int(counts[7])
    return _result("h2load", done, errors, seconds, durations_us)


def wrk_http(
    url: str, body: Path | None, concurrency: int, seconds: float, pin_cpus: str | None = None
) -> LoadResult:
    """REST POSTs of `body` (GETs when None) from `concurrency` keep-alive connections
    for `seconds` (one wrk thread)."""
    env = {**os.environ, "BENCH_METHOD": "GET"} if body is None else {}
    env = {**os.environ, **env, "BENCH_BODY_FILE": str(body or "")}
    base = [*_prefix(pin_cpus), "wrk", "-t1", f"-c{concurrency}", "-s", str(LUA_SCRIPT)]
    if seconds >= 2:  # wrk's durations are whole seconds
        warm = max(1, round(seconds / 4))
        subprocess.run([*base, f"-d{warm}s", url], capture_output=True, env=env)
    out = _run([*base, f"-d{max(1, round(seconds))}s", "--timeout", "10s", url], env=env)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    stats = json.loads(line.removeprefix("BENCH_JSON "))
    seconds_run = stats["duration_us"] / 1e6
    requests = stats["requests"]
    return LoadResult(
        tool="wrk",
        requests=requests,
        errors=sum(stats["errors"].values()),
        seconds=seconds_run,
        rps=requests / seconds_run,
        mean_ms=stats["mean_us"] / 1e3,
        p50_ms=stats["p50_us"] / 1e3,
        p90_ms=stats["p90_us"] / 1e3,
        p99_ms=stats["p99_us"] / 1e3,
    )


def _result(tool: str, requests: int, errors: int, seconds: float, us: np.ndarray) -> LoadResult:
    if us.size:
        p50, p90, p99 = np.percentile(us, [50, 90, 99]) / 1e3
        mean = float(us.mean()) / 1e3
    else:
        p50 = p90 = p99 = mean = float("nan")
    return LoadResult(
        tool=tool,
        requests=requests,
        errors=errors,
        seconds=seconds,
        rps=requests / seconds if seconds else 0.0,
        mean_ms=mean,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
    )


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout
