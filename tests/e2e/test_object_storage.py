"""Models served straight from S3 (moto's S3 server on loopback): hot load, removal
and half-done uploads under load, clear status errors, and the cache across restarts."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests.conftest import S3
from tests.harness import BackgroundLoad, ServerProcess, output, wait_for

pytestmark = pytest.mark.slow

X = np.array([[1.0]], np.float32)
MONITORING_CONFIG = 'prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }\n'


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("monitoring") / "monitoring.config"
    path.write_text(MONITORING_CONFIG)
    return path


_buckets = iter(range(10_000))


def y(server: ServerProcess, **kwargs) -> float:
    return float(output(server.predict("m", {"x": X}, **kwargs), "y").ravel()[0])


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    page = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10).text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}{{{re.escape(selector)}}} (\S+)$", page, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def bucket(s3_server: S3) -> str:
    return s3_server.bucket(f"e2e-{next(_buckets)}")


def serve(
    start_server, s3: S3, monitoring: Path, base_path: str, *flags: str, **kwargs
) -> ServerProcess:
    """A server for model `m` at `base_path`, its metrics page on."""
    return start_server(
        "--model_name=m",
        f"--model_base_path={base_path}",
        "--file_system_poll_wait_seconds=1",
        f"--monitoring_config_file={monitoring}",
        *flags,
        env=s3.env,
        **kwargs,
    )


def test_versions_come_and_go_under_load_and_half_uploads_wait(
    start_server, s3_server: S3, bucket: str, model_store: Path, tmp_path: Path, monitoring: Path
) -> None:
    s3_server.upload(model_store / "hp2_a", bucket, "models/m/1")
    server = serve(
        start_server,
        s3_server,
        monitoring,
        f"s3://{bucket}/models/m",
        f"--model_cache_dir={tmp_path / 'c'}",
    )
    server.wait_available("m", {1})
    assert y(server) == 2.5

    with BackgroundLoad(lambda: y(server), clients=3, pause_s=0.005) as load:  # light load
        # Version 2 arrives object by object; with its variables missing it must
        # neither load nor even be attempted.
        data = "variables/variables.data-00000-of-00001"
        s3_server.upload(model_store / "hp2_b", bucket, "models/m/2", skip={data})
        time.sleep(4)  # several polls
        assert server.versions("m") == {1}
        assert 2 not in {s.version for s in server.status("m").model_version_status}
        s3_server.upload(model_store / "hp2_b", bucket, "models/m/2")
        uploaded = time.monotonic()
        server.wait_available("m", {2})
        wait_for(lambda: 3.5 in load.first_seen, 10, "a request served by version 2")
        print(f"\nuploaded -> first request served by it: {load.first_seen[3.5] - uploaded:.2f}s")
        assert "storage_download" in server.logs or "downloaded" in server.logs
        # Version 2 removed from the bucket: version 1 comes back, nothing fails.
        s3_server.delete(bucket, "models/m/2")
        server.wait_available("m", {1})
        time.sleep(0.5)
    assert load.failures == []
    assert load.seen == {2.5, 3.5}
    assert load.count > 50
    assert metric(server, "model_server_storage_download_bytes_total", scheme="s3") > 0
    # Version 2's cached copy left with it.
    wait_for(lambda: not any((tmp_path / "c").glob("*/2")), 10, "version 2 leaving the cache")


def test_missing_bucket_and_bad_endpoint_show_in_status(
    start_server, s3_server: S3, bucket: str, model_store: Path, tmp_path: Path
) -> None:
    s3_server.upload(model_store / "hp2_a", bucket, "m/1")
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "good" base_path: "s3://{bucket}/m" }}\n'
        '  config { name: "nobucket" base_path: "s3://no-such-bucket-here/m" }\n'
        "}\n"
    )
    server = start_server(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=1",
        f"--model_cache_dir={tmp_path / 'c'}",
        env=s3_server.env,
    )
    server.wait_available("good", {1})

    wait_for(lambda: "does not exist" in details(server, "nobucket"), 20, "status error")
    assert "s3://no-such-bucket-here/m" in details(server, "nobucket")
    rest = requests.get(f"{server.rest_url}/v1/models/nobucket", timeout=10)
    assert rest.status_code == 404 and "does not exist" in rest.json()["error"]
    assert "no-such-bucket-here" in server.logs and "retrying in" in server.logs
    assert server.versions("good") == {1}

    # An endpoint nobody answers: the same kind of status, and the process stays up.
    unreachable = start_server(
        "--model_name=m",
        f"--model_base_path=s3://{bucket}/m",
        f"--model_cache_dir={tmp_path / 'c2'}",
        env={**s3_server.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    )
    wait_for(lambda: "endpoint unreachable" in details(unreachable), 30, "unreachable status")
    unreachable.check_alive()


def details(server: ServerProcess, model: str = "m") -> str:
    """GetModelStatus's error message for a model with no versions ('' if it has some)."""
    try:
        server.status(model)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return exc.details() or ""
    return ""


def test_restart_reuses_the_cache_without_downloading(
    start_server, s3_server: S3, bucket: str, model_store: Path, tmp_path: Path, monitoring: Path
) -> None:
    s3_server.upload(model_store / "hp2_a", bucket, "m/3")
    cache = f"--model_cache_dir={tmp_path / 'cache'}"
    first = serve(start_server, s3_server, monitoring, f"s3://{bucket}/m", cache)
    first.wait_available("m", {3})
    assert (
        metric(first, "model_server_storage_versions_total", scheme="s3", outcome="downloaded") == 1
    )
    first.stop()

    second = serve(start_server, s3_server, monitoring, f"s3://{bucket}/m", cache)
    second.wait_available("m", {3})
    assert y(second) == 2.5
    assert metric(second, "model_server_storage_versions_total", scheme="s3", outcome="cached") == 1
    assert metric(second, "model_server_storage_download_bytes_total", scheme="s3") == 0
    assert "using the cached copy" in second.logs and "downloading" not in second.logs
