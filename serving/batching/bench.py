"""Batching on vs off over gRPC, against the in-process call rate (same run).

    python -m serving.batching.bench [--model DIR] [--seconds 8] [--rounds 2]

Needs `h2load` (Debian: nghttp2-client): it drives unary gRPC Predict with a
pre-encoded request at a fixed concurrency, costing far less CPU than a
Python client would on the same cores. Rounds alternate off/on so the ratio
holds on a shared machine. Not a test; numbers go in docs/batching.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO.parent / "shared/testdata/tf_serving/saved_model_half_plus_two_cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process_rate(model_dir: Path, seconds: float) -> float:
    """Calls/s of one thread calling `SessionServable.run`, batch of one."""
    from serving.servables.session_bundle import SessionOptions, SessionServable

    version = sorted(p for p in model_dir.iterdir() if p.name.isdigit())[-1]
    servable = SessionServable("bench", int(version.name), str(version), SessionOptions())
    signature = servable.signatures["serving_default"]
    x = {"x": np.array([[1.0]], np.float32)}
    for _ in range(500):
        servable.run(signature, x, ["y"])
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            servable.run(signature, x, ["y"])
        n += 200
    servable.close()
    return n / elapsed


def runner_rate(model_dir: Path, seconds: float, concurrency: int, batching: bool) -> float:
    """Requests/s through a Runner in-process: the batching core without gRPC."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from serving.batching import BatchingRunner, BatchOptions
    from serving.inference.runner import DirectRunner
    from serving.servables.session_bundle import SessionOptions, SessionServable

    version = sorted(p for p in model_dir.iterdir() if p.name.isdigit())[-1]
    servable = SessionServable("bench", int(version.name), str(version), SessionOptions())
    signature = servable.signatures["serving_default"]
    executor = ThreadPoolExecutor(max(8, 4 * (os.cpu_count() or 1)))
    runner = BatchingRunner(BatchOptions(), executor) if batching else DirectRunner(executor)
    done = 0

    async def client(stop: float) -> None:
        nonlocal done
        x = {"x": np.array([[1.0]], np.float32)}
        loop = asyncio.get_running_loop()
        while loop.time() < stop:
            await runner.run(servable, signature, x, ["y"])
            done += 1

    async def run() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(client(loop.time() + 0.5) for _ in range(concurrency)))
        start = loop.time()
        nonlocal done
        done = 0
        await asyncio.gather(*(client(start + seconds) for _ in range(concurrency)))
        return done / (loop.time() - start)

    rate = asyncio.run(run())
    if isinstance(runner, BatchingRunner):
        runner.close()
    executor.shutdown()
    servable.close()
    return rate


def grpc_body(path: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp2"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    payload = request.SerializeToString()
    path.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)


def echo_server(port: int) -> None:
    """The gRPC stack alone: a grpc.aio Predict that returns a canned answer."""
    import asyncio

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    canned = predict_pb2.PredictResponse()
    canned.model_spec.name = "hp2"

    class Echo(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            return canned

    async def serve() -> None:
        server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Echo(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("AVAILABLE", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


def start_server(model_dir: Path, mode: str, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    flags = [f"--port={port}", "--model_name=hp2", f"--model_base_path={model_dir}"]
    if mode == "on":
        flags.append("--enable_batching")
    command = [sys.executable, "-m", "serving", *flags]
    if mode == "echo":
        command = [sys.executable, "-m", "serving.batching.bench", f"--echo-server={port}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        if "AVAILABLE" in log.read_text():  # the model's, or the echo server's line
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc, port
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not come up:\n{log.read_text()}")


def h2load(port: int, body: Path, seconds: float, concurrency: int) -> float:
    connections = 8 if concurrency % 8 == 0 else 1
    cmd = [
        "h2load",
        f"--duration={int(seconds)}",
        "--warm-up-time=1",
        f"-c{connections}",
        f"-m{concurrency // connections}",
        "-t1",
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"http://127.0.0.1:{port}/tensorflow.serving.PredictionService/Predict",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    if not match or not ok or int(ok.group(2)):
        raise RuntimeError(f"h2load failed:\n{out}")
    return float(match.group(1))


def check_answer(port: int) -> None:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hp2"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
        y = tf.make_ndarray(stub.Predict(request, timeout=10).outputs["y"])
        assert y.tolist() == [[2.5]], y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return
    if not shutil.which("h2load"):
        sys.exit("h2load not found (apt-get install nghttp2-client)")
    tmp = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    body = tmp / "predict.grpc"
    grpc_body(body)
    for batching in (False, True):
        rate = runner_rate(args.model, min(args.seconds, 4.0), args.concurrency, batching)
        print(
            f"in-process through the Runner, c={args.concurrency}, batching "
            f"{'on' if batching else 'off'}: {rate:.0f} req/s",
            flush=True,
        )
    modes = ("off", "on", "echo")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    inproc: list[float] = []
    for _ in range(args.rounds):
        inproc.append(in_process_rate(args.model, min(args.seconds, 4.0)))
        for mode in modes:
            proc, port = start_server(args.model, mode, tmp / f"server-{mode}.log")
            try:
                if mode != "echo":
                    check_answer(port)
                rates[mode].append(h2load(port, body, args.seconds, args.concurrency))
            finally:
                proc.terminate()
                proc.wait(30)
        print(
            f"round: in-process {inproc[-1]:.0f}/s, "
            + ", ".join(f"{m} {rates[m][-1]:.0f}/s" for m in modes)
            + f", on/off {rates['on'][-1] / rates['off'][-1]:.2f}x",
            flush=True,
        )
    med = {m: statistics.median(v) for m, v in rates.items()}
    med_in = statistics.median(inproc)
    c = args.concurrency
    print(f"medians over {args.rounds} rounds (log: {tmp})")
    print(f"  in-process, one thread, batch of 1: {med_in:8.0f} calls/s")
    print(f"  gRPC c={c} batching off:             {med['off']:8.0f} req/s")
    print(f"  gRPC c={c} batching on:              {med['on']:8.0f} req/s")
    print(f"  gRPC c={c} stack alone (echo):       {med['echo']:8.0f} req/s")
    print(
        f"  on/off = {med['on'] / med['off']:.2f}x   on/in-process = {med['on'] / med_in:.0%}"
        f"   echo/in-process = {med['echo'] / med_in:.0%}"
    )


if __name__ == "__main__":
    main()
