"""--model_config_file: start-up errors, live polling, HandleReloadConfigRequest."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2

from loadtests.servers import models_config
from tests.conftest import install
from tests.harness import END, REPO, output, wait_for

X = np.array([[1.0]], np.float32)


def run_cli(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_unparseable_config_at_start_exits_naming_file(testdata: Path) -> None:
    bad = testdata / "tf_serving/bad_model_config.txt"
    started = time.monotonic()
    result = run_cli("--port=0", f"--model_config_file={bad}")
    assert result.returncode != 0
    assert str(bad) in result.stderr
    assert "improperly" in result.stderr  # the parse error itself
    # TF Serving's phrase, then the file and the parser's line:column message.
    assert (
        f"Error parsing text-format tensorflow.serving.ModelServerConfig: {bad}: 1:1 : "
        in result.stderr
    )
    assert time.monotonic() - started < 30


def test_missing_base_path_and_config_is_refused() -> None:
    result = run_cli("--port=0")
    assert result.returncode != 0
    assert (
        "Both server_options.model_base_path and server_options.model_config_file are empty!"
        in result.stderr
    )


def test_unknown_flag_is_refused() -> None:
    result = run_cli("--model_base_pth=/x")
    assert result.returncode != 0
    assert "unknown command line flag 'model_base_pth'" in result.stderr


def test_config_file_polling_adds_removes_and_survives_bad_edits(
    start_server, model_store: Path, tmp_path: Path
) -> None:
    a = install(model_store, "hp2_a", tmp_path / "a" / "1").parent
    b = install(model_store, "hp2_b", tmp_path / "b" / "1").parent
    config = tmp_path / "models.config"
    config.write_text(models_config({"a": a}))
    server = start_server(
        f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"
    )
    server.wait_available("a", {1})

    config.write_text(models_config({"a": a, "b": b}))
    server.wait_available("b", {1})
    assert float(output(server.predict("b", {"x": X}), "y")[0, 0]) == 3.5

    config.write_text(models_config({"b": b}))
    wait_for(lambda: server.versions("a", END) == {1}, 20, "model a to unload")
    with pytest.raises(grpc.RpcError) as err:
        server.predict("a", {"x": X})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    config.write_text("model_config_list { config { name: ")  # a broken edit
    wait_for(lambda: "keeping the previous config" in server.logs, 20, "reload error logged")
    assert float(output(server.predict("b", {"x": X}), "y")[0, 0]) == 3.5
    server.check_alive()


def test_handle_reload_config_request(start_server, model_store: Path, tmp_path: Path) -> None:
    a = install(model_store, "hp2_a", tmp_path / "a" / "1").parent
    c = install(model_store, "hp2_c", tmp_path / "c" / "7").parent
    server = start_server("--model_name=a", f"--model_base_path={a}")
    server.wait_available("a", {1})

    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(models_config({"a": a, "c": c}), request.config)
    response = server.model_stub.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    # TF Serving returns once the new models are available.
    assert float(output(server.predict("c", {"x": X}), "y")[0, 0]) == 4.5

    relative = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(models_config({"r": Path("relative/path")}), relative.config)
    with pytest.raises(grpc.RpcError) as err:
        server.model_stub.HandleReloadConfigRequest(relative, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected model r to have an absolute path or URI" in err.value.details()
    assert server.versions("c") == {7}  # the rejected config changed nothing

    missing = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(models_config({"a": a, "c": c, "gone": tmp_path / "nowhere"}), missing.config)
    with pytest.raises(grpc.RpcError) as err:
        server.model_stub.HandleReloadConfigRequest(missing, timeout=60)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert "1 model(s) did not become available" in err.value.details()

    empty = model_management_pb2.ReloadConfigRequest()
    with pytest.raises(grpc.RpcError) as err:
        server.model_stub.HandleReloadConfigRequest(empty, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Only ModelConfigList is currently supported" in err.value.details()


def test_server_ignores_unreachable_base_path(start_server, tmp_path: Path) -> None:
    server = start_server("--model_name=m", f"--model_base_path={tmp_path / 'missing'}")
    wait_for(lambda: "Could not find base path" in server.logs, 20, "base path warning")
    server.check_alive()
    with pytest.raises(grpc.RpcError) as err:
        server.predict("m", {"x": X})
    assert err.value.details() == "Servable not found for request: Latest(m)"
