"""Ceilings beside the floor: what the server could reach if one part cost nothing.

- The batching core without gRPC: concurrent callers through the server's own
  Runner in-process, batching off (`DirectRunner`) and on (`BatchingRunner`
  with the batching-on server's parameters).
- The gRPC stack without a model: `loadtests.echo` under the same h2load load
  as the real server.
- A peer: `loadtests.naive`, a hand-written batch-queue server on the same
  SavedModel, which the server should beat.
- The HTTP stack without a model: the REST server's own fixed-body handler
  (`/v1/health/live`) under the same wrk load as REST predict.

When the server over gRPC sits far below the first and near the second, the
gRPC stack, not the model or batching, is what limits it. Every run also
records the CPU time the serving process spent per 1,000 requests (from
/proc), which a shared machine disturbs less than throughput.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from loadtests.generators import LoadResult
from loadtests.models import BenchModel
from loadtests.servers import REPO, free_port, port_open


class RunnerRate(BaseModel):
    batching: str  # off | on
    concurrency: int
    rps: float


class EchoRun(BaseModel):
    concurrency: int
    result: LoadResult
    cpu_ms_per_1k: float | None = None  # serving process CPU per 1,000 requests


class Ceilings(BaseModel):
    model: str
    runner: list[RunnerRate]
    grpc_echo: list[EchoRun]  # h2load against the echo server
    naive: list[EchoRun] = []  # h2load against the naive batch-queue server
    rest_fixed: list[EchoRun] = []  # wrk against the REST server's fixed-body handler


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_1k(cpu_s: float, requests: int) -> float | None:
    return cpu_s * 1e6 / requests if requests else None


def runner_rate(
    model: BenchModel,
    version_dir: Path,
    seconds: float,
    concurrency: int,
    batching_parameters: Path | None,
) -> RunnerRate:
    """Requests/s of `concurrency` asyncio callers through the server's Runner, in-process."""
    from serving.batching import BatchingRunner
    from serving.batching.params import load_file
    from serving.inference.runner import DirectRunner
    from serving.servables.loader import load_servable
    from serving.servables.session_bundle import SessionOptions

    servable = load_servable(model.name, 1, str(version_dir), SessionOptions())
    signature = servable.signatures["serving_default"]
    executor = ThreadPoolExecutor(max(8, 4 * (os.cpu_count() or 1)))
    runner: BatchingRunner | DirectRunner = (
        BatchingRunner(load_file(str(batching_parameters)), executor)
        if batching_parameters
        else DirectRunner(executor)
    )
    inputs = {model.input_name: model.row[None]}
    outputs = [model.output_name]
    done = 0

    async def caller(until: float) -> None:
        nonlocal done
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await runner.run(servable, signature, inputs, outputs)
            done += 1

    async def measure() -> float:
        nonlocal done
        loop = asyncio.get_running_loop()
        warm = loop.time() + min(0.5, seconds)
        await asyncio.gather(*(caller(warm) for _ in range(concurrency)))
        done, start = 0, loop.time()
        await asyncio.gather(*(caller(start + seconds) for _ in range(concurrency)))
        return done / (loop.time() - start)

    try:
        rps = asyncio.run(measure())
    finally:
        if isinstance(runner, BatchingRunner):
            runner.close()
        executor.shutdown()
        servable.close()
    label = "on" if batching_parameters else "off"
    return RunnerRate(batching=label, concurrency=concurrency, rps=rps)


class PeerServer:
    """`python -m loadtests.<module> --port=N ...` on a free loopback port."""

    def __init__(self, module: str, args: list[str], work: Path) -> None:
        self.port = free_port()
        self.log_path = work / "logs" / f"server-{module}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"loadtests.{module}", f"--port={self.port}", *args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"peer server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def echo_server(response: bytes, work: Path) -> PeerServer:
    """The gRPC stack alone, answering `response` to every Predict."""
    (work / "echo-response.bin").write_bytes(response)
    return PeerServer("echo", [f"--response={work / 'echo-response.bin'}"], work)


def naive_server(model: BenchModel, version_dir: Path, work: Path) -> PeerServer:
    """The hand-written batch-queue peer on the same SavedModel."""
    args = [f"--model={version_dir}", f"--input={model.input_name}"]
    return PeerServer("naive", [*args, f"--output={model.output_name}"], work)
