"""Hot loading: versions appear, fail, vanish and swap while clients call."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import install
from tests.harness import AVAILABLE, END, BackgroundLoad, ServerProcess, output, wait_for

X = np.array([[1.0]], np.float32)
# model_store's half_plus_two variants: y(1.0) = 0.5 + b
Y_OF = {"hp2_a": 2.5, "hp2_b": 3.5, "hp2_c": 4.5}


def y(server: ServerProcess, model: str = "m", **kwargs) -> float:
    return float(output(server.predict(model, {"x": X}, **kwargs), "y").ravel()[0])


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "m"
    path.mkdir(parents=True)
    return path


def test_new_versions_hot_load_and_removed_ones_unload(
    start_server, model_store: Path, base: Path
) -> None:
    install(model_store, "hp2_a", base / "1")
    server = start_server(
        "--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"
    )
    server.wait_available("m", {1})
    assert y(server) == 2.5

    # Junk beside the versions is ignored: staging folders, dot folders, files.
    install(model_store, "hp2_c", base / "tmp.7")
    (base / ".incoming").mkdir()
    (base / "9").write_text("not a folder")

    install(model_store, "hp2_b", base / "2")
    server.wait_available("m", {2})
    assert y(server) == 3.5
    states = {s.version: s.state for s in server.status("m").model_version_status}
    assert states == {2: AVAILABLE, 1: END}

    shutil.rmtree(base / "2")  # the newest goes away: the previous comes back
    server.wait_available("m", {1})
    assert y(server) == 2.5
    assert "tmp.7" not in server.logs


def test_failed_version_keeps_old_serving_then_partial_copy_completes(
    start_server, model_store: Path, base: Path
) -> None:
    install(model_store, "hp2_a", base / "1")
    server = start_server(
        "--model_name=m",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=1",
        "--max_num_load_retries=0",
    )
    server.wait_available("m", {1})

    # A version folder caught mid-copy: saved_model.pb present, variables not yet.
    partial = base / "2"
    partial.mkdir()
    shutil.copy(model_store / "hp2_b" / "saved_model.pb", partial / "saved_model.pb")
    wait_for(lambda: 2 in server.versions("m", END), 30, "version 2 to fail")
    failed = server.status("m", 2).model_version_status[0]
    assert failed.status.error_code != 0
    assert failed.status.error_message
    assert y(server) == 2.5  # version 1 keeps serving
    assert server.versions("m") == {1}

    shutil.copytree(model_store / "hp2_b" / "variables", partial / "variables")
    server.wait_available("m", {2}, timeout=30)  # retried because its files changed
    assert y(server) == 3.5
    server.check_alive()


def test_garbage_version_is_reported(start_server, model_store: Path, base: Path) -> None:
    install(model_store, "hp2_a", base / "1")
    bad = base / "5"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"\x00not a protobuf at all")
    server = start_server(
        "--model_name=m",
        f"--model_base_path={base}",
        "--max_num_load_retries=0",
        "--file_system_poll_wait_seconds=1",
    )
    wait_for(lambda: 5 in server.versions("m", END), 30, "version 5 to fail")
    status = server.status("m").model_version_status
    assert [(s.version, s.state) for s in status] == [(5, END)]
    assert status[0].status.error_message
    with pytest.raises(grpc.RpcError) as err:
        y(server)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_hot_swap_under_load_fails_no_request(start_server, model_store: Path, base: Path) -> None:
    install(model_store, "hp2_a", base / "1")
    server = start_server(
        "--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"
    )
    server.wait_available("m", {1})
    with BackgroundLoad(lambda: y(server), clients=8) as load:
        for version, kind in ((2, "hp2_b"), (3, "hp2_c")):
            install(model_store, kind, base / str(version))
            server.wait_available("m", {version})
            time.sleep(0.5)
        shutil.rmtree(base / "3")
        server.wait_available("m", {2})
        time.sleep(0.5)
    assert load.failures == []
    assert load.seen == {2.5, 3.5, 4.5}
    assert load.count > 100


def test_policies_labels_and_lookups(start_server, model_store: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for name, kinds in {
        "all": ["hp2_a", "hp2_b", "hp2_c"],
        "some": ["hp2_a", "hp2_b", "hp2_c"],
        "latest2": ["hp2_a", "hp2_b", "hp2_c"],
    }.items():
        (root / name).mkdir(parents=True)
        for version, kind in enumerate(kinds, start=1):
            install(model_store, kind, root / name / str(version))
    config = tmp_path / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{ name: "all" base_path: "{root / "all"}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }} }}
  config {{ name: "some" base_path: "{root / "some"}" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 1 versions: 3 versions: 8 }} }}
           version_labels {{ key: "stable" value: 1 }}
           version_labels {{ key: "canary" value: 3 }} }}
  config {{ name: "latest2" base_path: "{root / "latest2"}" model_platform: "tensorflow"
           model_version_policy {{ latest {{ num_versions: 2 }} }} }}
}}
""")
    server = start_server(f"--model_config_file={config}")
    server.wait_available("all", {1, 2, 3})
    server.wait_available("some", {1, 3})
    server.wait_available("latest2", {2, 3})
    assert y(server, "all", version=2) == 3.5
    assert y(server, "all") == 4.5  # latest
    assert y(server, "some", label="stable") == 2.5
    assert y(server, "some", label="canary") == 4.5
    response = server.predict("some", {"x": X}, label="stable")
    assert response.model_spec.version.value == 1
    with pytest.raises(grpc.RpcError) as err:
        y(server, "some", version=2)
    assert err.value.details() == "Servable not found for request: Specific(some, 2)"
    assert "Version 8 of servable some" in server.logs  # missing specific version warned
