"""`python -m loadtests.naive --port=N --model=DIR --input=x --output=y`: a peer to beat.

What a user might write in an afternoon instead of running a model server: a
grpc.aio Predict that parses the request, queues its rows on an asyncio
queue, and one batcher task that takes whatever is queued, runs it through
the SavedModel's Session callable on a thread and hands each caller its rows.
No metrics, no limits, one model. Kept deliberately naive (about 40 lines).
"""

from __future__ import annotations

import argparse
import asyncio

from loadtests.echo import start_predict_server


async def serve(port: int, model_dir: str, input_alias: str, output_alias: str) -> None:
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    session = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], model_dir)
    signature = meta.signature_def["serving_default"]
    run = session.make_callable(
        signature.outputs[output_alias].name, [signature.inputs[input_alias].name]
    )
    queue: asyncio.Queue = asyncio.Queue()

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            try:
                rows = np.concatenate([x for x, _ in items])
                out = await loop.run_in_executor(None, run, rows)
            except Exception as exc:  # a bad request fails its batch, not the server
                out = exc
            start = 0
            for x, future in items:
                if future.done():  # its caller went away
                    pass
                elif isinstance(out, Exception):
                    future.set_exception(out)
                else:
                    future.set_result(out[start : start + len(x)])
                start += len(x)

    async def predict(request: predict_pb2.PredictRequest, context: object) -> bytes:
        x = tf.make_ndarray(request.inputs[input_alias])
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait((x, future))
        y = await future
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.outputs[output_alias].CopyFrom(tf.make_tensor_proto(y))
        return response.SerializeToString()

    task = asyncio.create_task(batcher())
    server = await start_predict_server(port, predict)
    print("naive server listening", flush=True)
    await server.wait_for_termination()
    task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True, help="SavedModel version directory")
    parser.add_argument("--input", required=True, help="input alias")
    parser.add_argument("--output", required=True, help="output alias")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.model, args.input, args.output))


if __name__ == "__main__":
    main()
