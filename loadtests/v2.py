"""V2 (Open Inference Protocol) against TF Serving's API on the same model and server.

    python -m loadtests.v2 [--duration S] [--concurrency 1 16] [--rounds 2]

One server, half_plus_two, batch of one. Four request kinds, each a
pre-encoded body sent by the bench's own generators: gRPC
PredictionService/Predict and GRPCInferenceService/ModelInfer (raw input
contents, as tritonclient sends them) through h2load; REST `:predict` and
`/v2/.../infer` (JSON) through wrk. The kinds run interleaved, `rounds` times
each. Throughput on a shared machine swings with the neighbours' load, so the
cost compared is the server's own CPU time per request (utime + stime from
/proc, over the run, divided by the requests served), the median over rounds;
req/s is reported beside it. The target: each V2 path costs at most 10% more
than TF Serving's on the same transport.
Writes loadtests/results/v2_latest.json and .txt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests import generators
from loadtests.servers import LocalServer

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "half_plus_two"
MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
ROW = np.array([[1.0]], dtype=np.float32)
TARGET = 0.10  # V2 may cost at most this much throughput against TF Serving's API


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def bodies(work: Path) -> dict[str, Path]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.protos import v2_pb2

    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = MODEL
    predict.inputs["x"].CopyFrom(tf.make_tensor_proto(ROW))
    infer = v2_pb2.ModelInferRequest(model_name=MODEL)
    infer.inputs.add(name="x", datatype="FP32", shape=list(ROW.shape))
    infer.raw_input_contents.append(ROW.tobytes())
    v2_json = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    files = {
        "tfs-grpc": _frame(predict.SerializeToString()),
        "v2-grpc": _frame(infer.SerializeToString()),
        "tfs-rest": json.dumps({"instances": ROW.tolist()}).encode(),
        "v2-rest": json.dumps(v2_json).encode(),
    }
    paths = {}
    for kind, data in files.items():
        paths[kind] = work / f"{kind}.body"
        paths[kind].write_bytes(data)
    return paths


def frame_sizes(target: str) -> dict[str, int]:
    """Each gRPC kind's framed response size (h2load's error count needs it)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.protos import v2_pb2, v2_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = MODEL
        predict.inputs["x"].CopyFrom(tf.make_tensor_proto(ROW))
        tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict)
        infer = v2_pb2.ModelInferRequest(model_name=MODEL)
        infer.inputs.add(name="x", datatype="FP32", shape=list(ROW.shape))
        infer.raw_input_contents.append(ROW.tobytes())
        v2 = v2_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer)
        got = np.frombuffer(v2.raw_output_contents[0], dtype="<f4")
        if got.tolist() != [2.5]:
            raise AssertionError(f"V2 ModelInfer answered {got}")
    return {"tfs-grpc": 5 + tfs.ByteSize(), "v2-grpc": 5 + v2.ByteSize()}


def run(args: argparse.Namespace) -> dict:
    from serving.examples import write_half_plus_two

    work = Path(tempfile.mkdtemp(prefix="v2bench-"))
    write_half_plus_two(work / "models" / MODEL / "1")
    server = LocalServer(
        "v2",
        [f"--model_name={MODEL}", f"--model_base_path={work / 'models' / MODEL}"],
        work,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            server.check_alive()
            try:
                frames = frame_sizes(server.grpc_target)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        paths = bodies(work)
        grpc_url = f"http://{server.grpc_target}"
        rest = f"http://127.0.0.1:{server.rest_port}"
        urls = {
            "tfs-rest": f"{rest}/v1/models/{MODEL}:predict",
            "v2-rest": f"{rest}/v2/models/{MODEL}/infer",
        }
        runs: dict[tuple[str, int], list[tuple[generators.LoadResult, float]]] = {}
        for conc in args.concurrency:
            for _ in range(args.rounds):
                for kind in paths:
                    before = cpu_seconds(server.proc.pid)
                    if kind.endswith("grpc"):
                        path = MODEL_INFER_PATH if kind == "v2-grpc" else generators.PREDICT_PATH
                        result = generators.h2load_grpc(
                            grpc_url, paths[kind], conc, args.duration, frames[kind], path=path
                        )
                    else:
                        result = generators.wrk_http(urls[kind], paths[kind], conc, args.duration)
                    # The warm-up run's requests are in the CPU time too: count them by
                    # the same rate (its duration is a quarter of the run's, or 100 ms).
                    spent = cpu_seconds(server.proc.pid) - before
                    if result.errors:
                        raise AssertionError(f"{kind} c{conc}: {result.errors} errors")
                    warm = _warm_seconds(kind, args.duration)
                    per_request = spent / (result.requests * (1 + warm / result.seconds))
                    runs.setdefault((kind, conc), []).append((result, per_request))
                    print(
                        f"  {kind:<9} c{conc:<3} {result.rps:8.0f} req/s  "
                        f"p99 {result.p99_ms:6.2f} ms  cpu {per_request * 1e6:6.0f} us/req",
                        flush=True,
                    )
    finally:
        server.stop()
    rows = []
    for conc in args.concurrency:
        for transport in ("grpc", "rest"):
            tfs, v2 = runs[(f"tfs-{transport}", conc)], runs[(f"v2-{transport}", conc)]
            tfs_us = statistics.median(c for _r, c in tfs) * 1e6
            v2_us = statistics.median(c for _r, c in v2) * 1e6
            cost = v2_us / tfs_us - 1
            rows.append(
                {
                    "transport": transport,
                    "concurrency": conc,
                    "tfs_rps": round(max(r.rps for r, _c in tfs)),
                    "v2_rps": round(max(r.rps for r, _c in v2)),
                    "tfs_cpu_us": round(tfs_us, 1),
                    "v2_cpu_us": round(v2_us, 1),
                    "v2_extra_cost": round(cost, 4),
                    "met": cost <= TARGET,
                }
            )
    return {"model": MODEL, "duration_s": args.duration, "rounds": args.rounds, "rows": rows}


def _warm_seconds(kind: str, duration: float) -> float:
    if kind.endswith("grpc"):
        return max(100, int(duration * 250)) / 1000
    return max(1, round(duration / 4)) if duration >= 2 else 0.0


def table(report: dict) -> str:
    lines = [
        f"V2 vs TF Serving API, {report['model']}, batch 1, {report['rounds']} rounds "
        f"x {report['duration_s']}s; server CPU per request (median), best req/s",
        f"{'transport':<10}{'conc':>5}{'TFS us/req':>12}{'V2 us/req':>11}{'V2 extra':>10}"
        f"{'TFS req/s':>11}{'V2 req/s':>10}  target",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['transport']:<10}{r['concurrency']:>5}{r['tfs_cpu_us']:>12}{r['v2_cpu_us']:>11}"
            f"{r['v2_extra_cost'] * 100:>9.1f}%{r['tfs_rps']:>11}{r['v2_rps']:>10}  "
            f"{'met' if r['met'] else 'NOT MET'} (<= 10%)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    generators.ensure_tools(install=True)
    report = run(args)
    text = table(report)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "v2_latest.json").write_text(json.dumps(report, indent=1) + "\n")
        (RESULTS / "v2_latest.txt").write_text(text + "\n")
    return 0 if all(r["met"] for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
