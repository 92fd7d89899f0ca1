"""Fixtures: model repositories built with TensorFlow, and server processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from serving import examples
from tests.harness import REPO, ServerProcess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTDATA = Path(os.environ.get("MODEL_SERVER_TESTDATA", REPO.parent / "shared" / "testdata"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    """TF Serving's and TF Hub's own artifacts (../shared/testdata by default)."""
    if not (TESTDATA / "tf_serving").is_dir():
        pytest.skip(
            f"shared test data not found at {TESTDATA}; set MODEL_SERVER_TESTDATA to run "
            "the compatibility tests against TF Serving's own models"
        )
    return TESTDATA


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """Models written once per test session; copy them, never modify."""
    root = tmp_path_factory.mktemp("model_store")
    examples.write_half_plus_two(root / "hp2_a", 0.5, 2.0)
    examples.write_half_plus_two(root / "hp2_b", 0.5, 3.0)
    examples.write_half_plus_two(root / "hp2_c", 0.5, 4.0)
    examples.write_keras_classifier(root / "keras")
    examples.write_keras_module_export(root / "keras_module")
    examples.write_text_embedding_hub_module(root / "hub_text")
    return root


def install(store: Path, kind: str, dest: Path) -> Path:
    """Copy a stored model into `dest` atomically (as a deploy tool would)."""
    staging = dest.parent / f".tmp-{dest.name}"
    shutil.copytree(store / kind, staging)
    staging.rename(dest)
    return dest


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    servers: list[ServerProcess] = []

    def start(*flags: str, wait: bool = True, **kwargs) -> ServerProcess:
        server = ServerProcess(*flags, log_dir=tmp_path, **kwargs)
        servers.append(server)
        if wait:
            server.wait_serving()
        return server

    yield start
    for server in servers:
        server.stop()


class S3:
    """A real S3-compatible server (moto's) on loopback, and a boto3 client for it."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def upload(self, local: Path, bucket: str, prefix: str, skip: Iterable[str] = ()) -> list[str]:
        """Put every file below `local` under `prefix/`, one object at a time.

        Files whose relative path is in `skip` are left out (a half-done upload);
        returns the keys written.
        """
        keys = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            if rel in skip:
                continue
            key = f"{prefix}/{rel}"
            self.client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def delete(self, bucket: str, prefix: str) -> None:
        listing = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
        for item in listing.get("Contents", []):
            self.client.delete_object(Bucket=bucket, Key=item["Key"])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1 (a free port), for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3, monkeypatch) -> S3:
    """s3_server, with this process's AWS variables pointing at it."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    return s3_server
