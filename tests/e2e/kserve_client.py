"""Drive the server with the `kserve` SDK's own V2 clients; runs in .venv-kserve.

kserve pins a protobuf older than TensorFlow's and its generated V2 stubs clash
with tritonclient's, so this script runs in its own virtualenv, as a
subprocess of tests/e2e/test_v2.py. It reads a list of checks as JSON on
stdin, runs them all through one client (`rest`: InferenceRESTClient on the
v2 protocol; `grpc`: InferenceGRPCClient) and prints one JSON object, id →
result, for the test to assert on. It imports nothing from the project.

Tensors travel as JSON: a non-BYTES tensor as base64 of its little-endian
C-order bytes (`raw`), a BYTES tensor as a list of base64 elements (`items`).

    .venv-kserve/bin/python tests/e2e/kserve_client.py rest http://127.0.0.1:8501 < checks.json
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import RequestedOutput, serialize_byte_tensor
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse
from kserve.utils.numpy_codec import to_np_dtype


def decode_tensor(spec: dict[str, Any]) -> np.ndarray | None:
    """The numpy array the SDK takes (None for BF16: the SDK has no numpy type for it)."""
    shape = spec["shape"]
    if spec["datatype"] == "BYTES":
        items = [base64.b64decode(b) for b in spec["items"]]
        return np.array(items, dtype=object).reshape(shape)
    dtype = to_np_dtype(spec["datatype"])
    if dtype is None:
        return None
    return np.frombuffer(base64.b64decode(spec["raw"]), dtype=dtype).reshape(shape)


def raw_bytes(spec: dict[str, Any]) -> bytes:
    """The tensor in V2's binary form."""
    if spec["datatype"] == "BYTES":
        array = decode_tensor(spec)
        return bytes(serialize_byte_tensor(array).item()) if array is not None else b""
    return base64.b64decode(spec["raw"])


def encode_output(output: Any) -> dict[str, Any]:
    array = output.as_numpy()
    result: dict[str, Any] = {
        "datatype": output.datatype,
        "shape": list(output.shape),
        "dtype": str(array.dtype),
    }
    if output.datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        result["items"] = [base64.b64encode(v).decode() for v in items]
    else:
        result["raw"] = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
    return result


def build_request(check: dict[str, Any], transport: str) -> InferRequest:
    """Inputs set the usual way (`set_data_from_numpy`), binary or as JSON/typed
    contents; a BF16 input makes every input go through `raw_inputs`."""
    binary = check.get("binary", True)
    specs = check["inputs"]
    inputs: list[InferInput] = []
    raw_inputs = None
    if any(decode_tensor(s) is None for s in specs):
        raw_inputs = [raw_bytes(s) for s in specs]
        for spec, raw in zip(specs, raw_inputs, strict=True):
            params = {"binary_data_size": len(raw)} if transport == "rest" else None
            inputs.append(InferInput(spec["name"], spec["shape"], spec["datatype"], None, params))
    else:
        for spec in specs:
            tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_data_from_numpy(decode_tensor(spec), binary_data=binary)
            if "send_shape" in spec:  # a shape that does not match the data
                tensor.shape = spec["send_shape"]
            inputs.append(tensor)
    outputs = None
    if check.get("outputs"):
        params = {"binary_data": binary} if transport == "rest" else None
        outputs = [RequestedOutput(name, params) for name in check["outputs"]]
    return InferRequest(
        check["model"],
        inputs,
        request_id=check.get("id"),
        raw_inputs=raw_inputs,
        parameters=check.get("parameters"),
        request_outputs=outputs,
        model_version=check.get("version"),
    )


def infer_result(response: Any) -> dict[str, Any]:
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": {o.name: encode_output(o) for o in response.outputs},
    }


class Rest:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))

    async def run(self, check: dict[str, Any]) -> Any:
        op = check["op"]
        if op == "live":
            return await self.client.is_server_live(self.url)
        if op == "ready":
            return await self.client.is_server_ready(self.url)
        if op == "model_ready":
            return await self.client.is_model_ready(self.url, check["model"])
        if op in ("server_metadata", "model_metadata"):
            # The SDK's REST client has no metadata calls: plain GETs, parsed
            # by the SDK's own V2 data models.
            path = "/v2" if op == "server_metadata" else f"/v2/models/{check['model']}"
            kind = ServerMetadataResponse if op == "server_metadata" else ModelMetadataResponse
            async with httpx.AsyncClient() as http:
                response = await http.get(self.url + path)
            response.raise_for_status()
            return kind.model_validate(response.json()).model_dump()
        if op == "infer":
            request = build_request(check, "rest")
            return infer_result(await self.client.infer(self.url, request, check["model"]))
        raise ValueError(op)

    async def close(self) -> None:
        await self.client.close()


class Grpc:
    def __init__(self, url: str) -> None:
        # No retries: the test wants each status as the server sent it.
        self.client = InferenceGRPCClient(url, retries=0, timeout=60)
        # The SDK's gRPC client has no metadata calls: the SDK's own stub.
        self.channel = grpc.aio.insecure_channel(url)
        self.stub = GRPCInferenceServiceStub(self.channel)

    async def run(self, check: dict[str, Any]) -> Any:
        op = check["op"]
        if op == "live":
            return await self.client.is_server_live()
        if op == "ready":
            return await self.client.is_server_ready()
        if op == "model_ready":
            return await self.client.is_model_ready(check["model"])
        if op == "server_metadata":
            meta = await self.stub.ServerMetadata(pb.ServerMetadataRequest())
            return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
        if op == "model_metadata":
            meta = await self.stub.ModelMetadata(pb.ModelMetadataRequest(name=check["model"]))
            tensors = {
                side: [
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                    for t in getattr(meta, side)
                ]
                for side in ("inputs", "outputs")
            }
            return {
                "name": meta.name,
                "versions": list(meta.versions),
                "platform": meta.platform,
                **tensors,
            }
        if op == "infer":
            return infer_result(await self.client.infer(build_request(check, "grpc")))
        raise ValueError(op)

    async def close(self) -> None:
        await self.client.close()
        await self.channel.close()


def error_result(exc: Exception) -> dict[str, Any]:
    """How the error surfaces in the SDK: its type, status and message."""
    if isinstance(exc, httpx.HTTPStatusError):
        return {"type": "HTTPStatusError", "status": exc.response.status_code, "message": str(exc)}
    if isinstance(exc, grpc.aio.AioRpcError):
        return {"type": "AioRpcError", "status": exc.code().name, "message": exc.details()}
    return {"type": type(exc).__name__, "status": None, "message": str(exc)}


async def main(transport: str, url: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    client = Rest(url) if transport == "rest" else Grpc(url)
    results: dict[str, Any] = {}
    try:
        for check in checks:
            try:
                results[check["id"]] = {"ok": await client.run(check)}
            except Exception as exc:  # reported to the test, which asserts on it
                results[check["id"]] = {"error": error_result(exc)}
    finally:
        await client.close()
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], json.load(sys.stdin)))))
