"""TensorFlow's profiler service on the gRPC port, driven by TensorFlow's own client."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from tests.conftest import install

pytestmark = pytest.mark.slow


def event_names(logdir: Path) -> set[str]:
    """Every event name in the XSpace files the trace wrote."""
    files = list(logdir.glob("plugins/profile/*/*.xplane.pb"))
    assert files, f"no trace written under {logdir}"
    names: set[str] = set()
    for path in files:
        space = xplane_pb2.XSpace.FromString(path.read_bytes())
        for plane in space.planes:
            metadata = {key: value.name for key, value in plane.event_metadata.items()}
            for line in plane.lines:
                names.update(metadata.get(e.metadata_id, "") for e in line.events)
    return names


def test_trace_records_the_ops_of_requests_served(
    start_server, model_store: Path, tmp_path: Path
) -> None:
    base = install(model_store, "hp2_a", tmp_path / "models" / "hp2" / "1").parent
    server = start_server("--model_name=hp2", f"--model_base_path={base}")
    server.wait_available("hp2")
    assert "profiler server started" not in server.logs  # nothing runs until used

    stop = threading.Event()
    served: list[float] = []

    def send_predicts() -> None:
        while not stop.is_set():
            response = server.predict("hp2", {"x": np.array([[1.0]], np.float32)})
            served.append(response.outputs["y"].float_val[0])

    sender = threading.Thread(target=send_predicts)
    sender.start()
    logdir = tmp_path / "logdir"
    try:
        tf.profiler.experimental.client.trace(
            f"grpc://127.0.0.1:{server.grpc_port}", str(logdir), 2000
        )
    finally:
        stop.set()
        sender.join()
    assert served and set(served) == {2.5}
    names = event_names(logdir)
    # half_plus_two's graph ops (name:type), as TensorFlow's executor traced them.
    assert {"Mul:Mul", "y:AddV2"} <= names, sorted(names)[:40]
    # The service's other methods reach TensorFlow's server too: its Monitor
    # answers UNIMPLEMENTED itself (as through TF Serving), not gRPC's
    # "Method not found!" for an unregistered method.
    with pytest.raises(RuntimeError, match=r"^UNIMPLEMENTED: unimplemented\.$"):
        tf.profiler.experimental.client.monitor(f"grpc://127.0.0.1:{server.grpc_port}", 100)
    server.check_alive()


def test_disabled_profiler_is_not_served(start_server, model_store: Path, tmp_path: Path) -> None:
    base = install(model_store, "hp2_a", tmp_path / "models" / "hp2" / "1").parent
    server = start_server(
        "--model_name=hp2", f"--model_base_path={base}", "--enable_profiler=false"
    )
    profile = server.channel.unary_unary("/tensorflow.ProfilerService/Profile")
    with pytest.raises(grpc.RpcError) as err:
        profile(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "Method not found!"
