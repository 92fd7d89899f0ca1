"""The version source over an S3 base path (moto's server on loopback), with a
real manager and a loader that materialises through storage (no TensorFlow)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving.config.model_config import ModelConfig
from serving.errors import ServingError
from serving.manager.manager import ServableManager, ServableRequest
from serving.manager.state import State
from serving.sources.poller import FileSystemSource
from serving.storage import Storages
from tests.conftest import S3


class Loaded:
    """A stand-in servable: records the local folder it was loaded from."""

    device = ""

    def __init__(self, path: str) -> None:
        self.path = path
        self.files = sorted(p.name for p in Path(path).iterdir())

    def close(self) -> None:
        pass


@pytest.fixture
def wiring(tmp_path: Path):
    storages = Storages(str(tmp_path / "cache"))
    manager = ServableManager(
        lambda name, version, location: Loaded(storages.local_path(location)),
        load_retry_interval_s=0.1,
    )
    source = FileSystemSource(manager, 0, storages)  # poll once
    yield manager, source
    source.stop()
    manager.shutdown()


def wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_poll_once_still_takes_up_a_version_that_completes(
    s3_env: S3, wiring, tmp_path: Path
) -> None:
    manager, source = wiring
    bucket = s3_env.bucket("source-once")
    version = tmp_path / "v"
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"g")
    s3_env.upload(version, bucket, "m/4")
    source.set_models({"m": ModelConfig(name="m", base_path=f"s3://{bucket}/m")})
    source.start()
    wait(lambda: manager.available_versions("m") == [4])
    with manager.acquire(ServableRequest("m")) as servable:
        assert "saved_model.pb" in servable.files
        assert servable.path.startswith(str(tmp_path / "cache"))


def test_unlistable_base_path_is_in_the_status_and_retried(s3_env: S3, wiring) -> None:
    manager, source = wiring
    source.set_models({"m": ModelConfig(name="m", base_path="s3://missing-bucket-x/m")})
    source.start()

    def error() -> str:
        try:
            manager.status("m")
        except ServingError as exc:
            return str(exc)
        return ""

    wait(lambda: "bucket or path does not exist" in error())
    assert error().startswith("Could not find any versions of model m: Could not list base path")
    s3_env.bucket("missing-bucket-x")  # created: the retry (with backoff) finds it
    s3_env.client.put_object(Bucket="missing-bucket-x", Key="m/1/saved_model.pb", Body=b"g")
    wait(lambda: manager.available_versions("m") == [1], timeout=30)
    assert [s.state for s in manager.status("m")] == [State.AVAILABLE]
