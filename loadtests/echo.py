"""`python -m loadtests.echo --port=N --response=FILE`: the gRPC stack with no model.

A grpc.aio server whose Predict parses the request, as the real server does,
and answers with fixed bytes (the real server's answer to the bench's request,
so h2load's error count works unchanged). Loaded like the real server, it
gives the ceiling the Python gRPC stack alone sets on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

PREDICT = ("tensorflow.serving.PredictionService", "Predict")


async def start_predict_server(port: int, predict: Callable[..., Awaitable[bytes]]) -> Any:
    """A started grpc.aio server on loopback whose only method is Predict (shared by the peers)."""
    import grpc
    from tensorflow_serving.apis import predict_pb2

    handler = grpc.method_handlers_generic_handler(
        PREDICT[0],
        {
            PREDICT[1]: grpc.unary_unary_rpc_method_handler(
                predict, request_deserializer=predict_pb2.PredictRequest.FromString
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def serve(port: int, response: bytes) -> None:
    async def predict(request: object, context: object) -> bytes:
        return response

    server = await start_predict_server(port, predict)
    print("echo server listening", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True, help="serialized PredictResponse")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.response.read_bytes()))


if __name__ == "__main__":
    main()
