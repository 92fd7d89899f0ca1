"""What one request costs in the server's own request path, without sockets.

`python -m loadtests.handler_cost` loads half_plus_two with the server's own
wiring (`ModelServer`: manager, runner, metrics, request observer) and times,
on one event loop and batch of one:

- `model`: the signature call alone (`servable.run`), the floor;
- `grpc`: the gRPC Predict handler, a PredictRequest in, the serialized
  PredictResponse out (the handler serializes its own response);
- `rest`: the REST predict handler, a JSON body in, a JSON body out;
- `rest+http`: the same through the HTTP server's dispatch (its routing and,
  where it keeps one, its per-request time limit), still without a socket;
- `v2-grpc`, `v2-rest`, `v2-rest+http`: the same for the Open Inference
  Protocol (ModelInfer with raw input contents, `/v2/models/hp2/infer` JSON).

Figures are CPU time per call (best and median of the rounds), which a busy
machine disturbs far less than wall time.

The difference between a handler and the floor is what the request path
(codecs, the request context, metrics, the manager handle) adds per request.
The transports (grpcio, the HTTP server) are not included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from tensorflow_serving.apis import predict_pb2

MODEL = "hp2"


class _Context:
    """Just enough of grpc.aio.ServicerContext for a successful call."""

    async def abort(self, code, details):  # pragma: no cover - the bench sends valid requests
        raise RuntimeError(f"{code}: {details}")


def _request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_shape.dim.add().size = 1
    tensor.float_val.append(1.0)
    return request


async def _time(call: Callable[[], Awaitable[object]], rounds: int, number: int) -> list[float]:
    """Mean CPU µs per call for each of `rounds` runs of `number` calls (timeit's scheme).

    CPU time of the whole process (TensorFlow's threads included), not wall
    time: on a shared machine other processes' load would swamp the figures.
    """
    for _ in range(number):
        await call()
    means = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(number):
            await call()
        means.append((time.process_time() - started) / number * 1e6)
    return means


def _build(server):
    """The two handlers, and the HTTP server's dispatch, wired as the server wires them."""
    import inspect

    from serving.api.grpc.services import PredictionServicer
    from serving.api.rest.handlers import RestApi
    from serving.api.rest.http import HttpServer

    if "observer" in inspect.signature(PredictionServicer).parameters:  # before one path
        grpc_api = PredictionServicer(server.service, observer=server.observer)
        rest_api = RestApi(server.service, server.observer, 30.0)
        http = HttpServer(max_body_bytes=1 << 30, timeout_s=30.0)
    else:
        grpc_api = PredictionServicer(server.service)
        rest_api = RestApi(server.service, timeout_s=30.0)
        http = HttpServer(max_body_bytes=1 << 30)
    rest_api.mount(http)
    return grpc_api, rest_api, http


def _build_v2(server, http):
    from serving.api.v2.rest import V2Rest
    from serving.api.v2.servicer import V2Servicer
    from serving.protos import v2_pb2

    v2_rest = V2Rest(server.v2, 30.0)
    v2_rest.mount(http)
    request = v2_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[1.0]], np.float32).tobytes())
    return V2Servicer(server.v2), v2_rest, request


async def measure(rounds: int, number: int, batching: bool = False) -> dict[str, float]:
    from serving.api.rest.http import Request
    from serving.examples import write_half_plus_two
    from serving.flags import parse_flags
    from serving.server import ModelServer

    with tempfile.TemporaryDirectory() as tmp:
        write_half_plus_two(Path(tmp) / MODEL / "1")
        flags = [f"--model_name={MODEL}", f"--model_base_path={tmp}/{MODEL}"]
        if batching:
            params = Path(tmp) / "batching.pbtxt"
            params.write_text("max_batch_size { value: 128 } batch_timeout_micros { value: 0 }")
            flags += ["--enable_batching", f"--batching_parameters_file={params}"]
        options = parse_flags(flags)
        server = ModelServer(options)
        server.core.apply(server.initial_models, require_absolute=False)
        server.source.start()
        deadline = time.monotonic() + 60
        while not server.manager.available_versions(MODEL):
            if time.monotonic() > deadline:
                raise RuntimeError("half_plus_two did not load")
            await asyncio.sleep(0.05)
        try:
            grpc_api, rest_api, http = _build(server)
            v2_grpc, v2_rest, v2_request = _build_v2(server, http)
            v2_body = json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
            ).encode()
            v2_path = f"/v2/models/{MODEL}/infer"
            request, context = _request(), _Context()
            body = json.dumps({"instances": [[1.0]]}).encode()
            path = f"/v1/models/{MODEL}:predict"
            servable = next(iter(server.manager._models[MODEL].versions.values())).servable
            signature = servable.signatures["serving_default"]
            x = {"x": np.array([[1.0]], np.float32)}

            async def model() -> object:
                return servable.run(signature, x, ["y"])

            async def grpc_predict() -> object:
                return await grpc_api.Predict(request, context)

            async def rest_predict() -> object:
                response = await rest_api.handle(Request("POST", path, "", {}, body))
                assert response.status == 200, response.body
                return response

            async def rest_dispatch() -> object:
                response = await http.dispatch(Request("POST", path, "", {}, body))
                assert response.status == 200, response.body
                return response

            async def v2_grpc_infer() -> object:
                return await v2_grpc.ModelInfer(v2_request, context)

            async def v2_rest_infer() -> object:
                response = await v2_rest.handle(Request("POST", v2_path, "", {}, v2_body))
                assert response.status == 200, response.body
                return response

            async def v2_rest_dispatch() -> object:
                response = await http.dispatch(Request("POST", v2_path, "", {}, v2_body))
                assert response.status == 200, response.body
                return response

            calls = {
                "model": model,
                "grpc": grpc_predict,
                "rest": rest_predict,
                "rest+http": rest_dispatch,
                "v2-grpc": v2_grpc_infer,
                "v2-rest": v2_rest_infer,
                "v2-rest+http": v2_rest_dispatch,
            }
            results: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(rounds):  # interleaved, so machine noise hits each alike
                for name, call in calls.items():
                    results[name] += await _time(call, 1, number)
            return {name: min(means) for name, means in results.items()} | {
                f"{name}_median": statistics.median(means) for name, means in results.items()
            }
        finally:
            server.core.stop()
            server.source.stop()
            server.manager.shutdown(5.0)
            server.executor.shutdown(wait=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument(
        "--enable_batching",
        action="store_true",
        help="through the batching runner (max_batch_size 128, batch_timeout_micros 0)",
    )
    args = parser.parse_args()
    result = asyncio.run(measure(args.rounds, args.number, args.enable_batching))
    floor = result["model"]
    print(f"{'path':<14}{'best µs':>10}{'median µs':>12}{'over model':>12}")
    names = ("model", "grpc", "rest", "rest+http", "v2-grpc", "v2-rest", "v2-rest+http")
    for name in names:
        best, median = result[name], result[f"{name}_median"]
        print(f"{name:<14}{best:>10.1f}{median:>12.1f}{best - floor:>12.1f}")


if __name__ == "__main__":
    main()
