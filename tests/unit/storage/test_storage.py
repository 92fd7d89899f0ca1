"""serving.storage against a real S3 server (moto's, on loopback): listing, the
completeness rule, the atomic cache, restarts and errors. No model server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.storage import StorageError, Storages, events, is_remote, open_storage
from serving.storage.local import LocalStorage
from serving.storage.remote import MARKER, RemoteFile, is_complete, s3_options
from tests.conftest import S3


class Counting:
    """A download observer that remembers what happened."""

    def __init__(self) -> None:
        self.bytes = 0
        self.finished = 0
        self.failed = 0
        self.hits = 0

    def downloaded(self, scheme: str, size: int) -> None:
        self.bytes += size

    def download_finished(self, scheme: str, seconds: float) -> None:
        self.finished += 1

    def download_failed(self, scheme: str) -> None:
        self.failed += 1

    def cache_hit(self, scheme: str) -> None:
        self.hits += 1


@pytest.fixture
def observed(monkeypatch) -> Counting:
    counting = Counting()
    monkeypatch.setattr(events, "_observer", counting)
    return counting


def model_files(root: Path, shards: int = 1) -> Path:
    """A version folder's shape (contents do not matter to storage)."""
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph" * 100)
    (root / "variables" / "variables.index").write_bytes(b"index")
    for k in range(shards):
        (root / "variables" / f"variables.data-{k:05d}-of-{shards:05d}").write_bytes(b"w" * 1000)
    (root / "assets").mkdir()
    (root / "assets" / "vocab.txt").write_text("a\nb\n")
    return root


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(s3_env: S3) -> str:
    return s3_env.bucket(f"unit-{next(_buckets)}")


def test_incomplete_or_changing_versions_are_not_listed(
    s3_env: S3, bucket: str, tmp_path: Path
) -> None:
    files = model_files(tmp_path / "v1", shards=2)
    storage = open_storage(f"s3://{bucket}/models/m", str(tmp_path / "cache"))
    # Only the graph and one of two shards: never listed, however often polled.
    s3_env.upload(files, bucket, "models/m/1", skip={"variables/variables.data-00001-of-00002"})
    assert storage.versions() == {}
    assert storage.versions() == {}
    s3_env.upload(files, bucket, "models/m/1")
    assert storage.versions() == {}  # complete now, but changed since the last poll
    assert storage.versions() == {1: f"s3://{bucket}/models/m/1"}
    # Listed versions stay listed; folders that are not versions are ignored.
    s3_env.upload(files, bucket, "models/m/tmp.2")
    s3_env.client.put_object(Bucket=bucket, Key="models/m/notes.txt", Body=b"x")
    assert storage.versions() == {1: f"s3://{bucket}/models/m/1"}
    assert [row[0] for row in storage.fingerprint(1)] == [
        "assets/vocab.txt",
        "saved_model.pb",
        "variables/variables.data-00000-of-00002",
        "variables/variables.data-00001-of-00002",
        "variables/variables.index",
    ]


def test_download_once_atomically_and_reuse_after_restart(
    s3_env: S3, bucket: str, tmp_path: Path, observed: Counting
) -> None:
    files = model_files(tmp_path / "v1")
    s3_env.upload(files, bucket, "m/1")
    cache = tmp_path / "cache"
    storage = open_storage(f"s3://{bucket}/m", str(cache))
    storage.versions()
    assert storage.versions() == {1: f"s3://{bucket}/m/1"}
    local = Path(storage.local_path(1))
    for path in files.rglob("*"):
        if path.is_file():
            assert (local / path.relative_to(files)).read_bytes() == path.read_bytes()
    assert (local / MARKER).is_file()
    assert observed.finished == 1
    assert observed.bytes == sum(p.stat().st_size for p in files.rglob("*") if p.is_file())
    assert [p.name for p in local.parent.iterdir()] == ["1"]  # no temporary left behind

    assert storage.local_path(1) == str(local)
    assert (observed.finished, observed.hits) == (1, 1)

    # A restarted server: the cached copy matches the listing, so the version is
    # listed at the first poll and nothing is downloaded.
    restarted = open_storage(f"s3://{bucket}/m", str(cache))
    assert restarted.versions() == {1: f"s3://{bucket}/m/1"}
    assert restarted.local_path(1) == str(local)
    assert (observed.finished, observed.hits) == (1, 2)

    # Changed content is downloaded again, replacing the stale copy.
    (files / "assets" / "vocab.txt").write_text("a\nb\nc\n")
    s3_env.upload(files, bucket, "m/1")
    restarted.versions()
    restarted.local_path(1)
    assert (local / "assets" / "vocab.txt").read_text() == "a\nb\nc\n"
    assert observed.finished == 2


def test_versions_no_longer_aspired_leave_the_cache(
    s3_env: S3, bucket: str, tmp_path: Path
) -> None:
    files = model_files(tmp_path / "v")
    for version in (1, 2):
        s3_env.upload(files, bucket, f"m/{version}")
    storages = Storages(str(tmp_path / "cache"))
    storages.versions(f"s3://{bucket}/m")
    locations = storages.versions(f"s3://{bucket}/m")
    paths = {v: storages.local_path(loc) for v, loc in locations.items()}
    assert all(os.path.isdir(p) for p in paths.values())
    storages.open(f"s3://{bucket}/m").retain({2})
    assert not os.path.exists(paths[1]) and os.path.isdir(paths[2])
    storages.close(f"s3://{bucket}/m")  # the model left the config
    assert not os.path.exists(paths[2])


def test_a_file_that_vanishes_fails_the_download_cleanly(
    s3_env: S3, bucket: str, tmp_path: Path, observed: Counting
) -> None:
    s3_env.upload(model_files(tmp_path / "v"), bucket, "m/1")
    storage = open_storage(f"s3://{bucket}/m", str(tmp_path / "cache"))
    storage.versions()
    storage.versions()
    s3_env.client.delete_object(Bucket=bucket, Key="m/1/variables/variables.index")
    with pytest.raises(StorageError, match="Could not download s3://"):
        storage.local_path(1)
    assert observed.failed == 1
    assert list((tmp_path / "cache").rglob("*.index")) == []  # nothing half-written kept


def test_missing_bucket_and_bad_endpoint_are_clear_errors(
    s3_env: S3, tmp_path: Path, monkeypatch
) -> None:
    with pytest.raises(StorageError, match="bucket or path does not exist"):
        open_storage("s3://no-such-bucket/m", str(tmp_path)).versions()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StorageError, match="storage endpoint unreachable"):
        open_storage("s3://anything/m", str(tmp_path)).versions()


def test_tf_serving_s3_variables_and_schemes(tmp_path: Path) -> None:
    options = s3_options({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0"})
    assert options["client_kwargs"] == {"endpoint_url": "http://minio:9000", "verify": False}
    assert options["config_kwargs"]["s3"] == {"addressing_style": "path"}
    standard = s3_options({"AWS_ENDPOINT_URL": "https://ceph:7480", "S3_ENDPOINT": "ignored"})
    assert standard["client_kwargs"]["endpoint_url"] == "https://ceph:7480"
    assert s3_options({"S3_ENDPOINT": "s3.local"})["client_kwargs"]["endpoint_url"] == (
        "https://s3.local"
    )
    assert "endpoint_url" not in s3_options({})["client_kwargs"]

    assert isinstance(open_storage(str(tmp_path), str(tmp_path)), LocalStorage)
    assert is_remote("gs://b/m") and is_remote("az://c/m") and not is_remote("/models/m")
    with pytest.raises(StorageError, match="File system scheme 'ftp' not implemented"):
        open_storage("ftp://host/m", str(tmp_path))


def test_completeness_rule() -> None:
    def files(*names: str) -> dict[str, RemoteFile]:
        return {n: RemoteFile(n, 1, "") for n in names}

    assert is_complete(files("saved_model.pb"))  # no variables at all
    assert is_complete(files("model.tflite"))
    assert not is_complete(
        files("variables/variables.index", "variables/variables.data-00000-of-00001")
    )
    assert not is_complete(files("saved_model.pb", "variables/variables.index"))
    assert not is_complete(files("saved_model.pb", "variables/variables.data-00000-of-00001"))
    assert not is_complete(
        files(
            "saved_model.pb",
            "variables/variables.index",
            "variables/variables.data-00001-of-00002",
        )
    )


def test_local_storage_lists_in_place(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "tmp.2").mkdir()
    storages = Storages(str(tmp_path / "cache"))
    assert storages.versions(str(tmp_path)) == {1: str(tmp_path / "1")}
    assert storages.local_path(str(tmp_path / "1")) == str(tmp_path / "1")
    assert storages.fingerprint(str(tmp_path / "1")) is None
    with pytest.raises(StorageError, match="Could not find base path"):
        storages.versions(str(tmp_path / "missing"))
