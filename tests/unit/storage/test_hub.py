"""Handles, the tensorflow_hub cache protocol and hostile archives (no TensorFlow).

A real HTTP server on loopback plays tfhub.dev; archives are real tarballs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.storage import StorageError, open_storage
from serving.storage.hub import HubError, HubStorage, handle_version, is_hub_handle
from tests.hub_server import HubServer, device, hub_server, link, tar_members

MODEL = [("saved_model.pb", b"graph"), ("variables/variables.index", b"idx")]


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with hub_server() as server:
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.mark.parametrize(
    ("path", "handle", "version"),
    [
        ("https://tfhub.dev/google/nnlm-en-dim128/2", True, 2),
        ("https://hub.example/models/m/17/", True, 17),
        ("https://hub.example/m.tar.gz", True, 1),
        ("http://[::1", True, 1),  # malformed, but a URL: HubStorage reports it
        ("gs://bucket/m/3.tar.gz", True, 1),
        ("gs://bucket/models/m", False, None),
        ("s3://bucket/models/m", False, None),
        ("/models/m", False, None),
        ("/models/m.tar.gz", True, 1),
    ],
)
def test_handles_and_versions(path: str, handle: bool, version: int | None) -> None:
    assert is_hub_handle(path) is handle
    if handle:
        assert handle_version(path) == version


def test_download_follows_the_tensorflow_hub_protocol(hub: HubServer, cache: Path) -> None:
    handle = hub.add("/google/m/2", tar_members(*MODEL))
    storage = HubStorage(handle, str(cache))
    assert storage.versions() == {2: handle}
    path = storage.local_path(2)
    sha = hashlib.sha1(handle.encode()).hexdigest()
    assert path == str(cache / sha)
    assert (cache / sha / "saved_model.pb").read_bytes() == b"graph"
    assert hub.requests == ["/google/m/2?tf-hub-format=compressed"]
    descriptor = (cache / f"{sha}.descriptor.txt").read_text()
    assert descriptor.startswith(f"Module: {handle}\nDownload Time: ")
    assert sorted(os.listdir(cache)) == [sha, f"{sha}.descriptor.txt"]  # no lock, no tmp
    # Cached: neither this nor a second storage object downloads again.
    assert HubStorage(handle, str(cache)).local_path(2) == path
    assert len(hub.requests) == 1


def test_default_cache_is_tfhub_cache_dir(hub: HubServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "env_cache"))
    handle = hub.add("/m.tar.gz", tar_members(*MODEL))
    path = HubStorage(handle).local_path(1)
    assert Path(path).parent == tmp_path / "env_cache"


def test_model_in_a_single_top_folder(hub: HubServer, cache: Path) -> None:
    handle = hub.add("/wrapped/1", tar_members(("model/saved_model.pb", b"g")))
    path = HubStorage(handle, str(cache)).local_path(1)
    assert path.endswith("/model") and os.path.isfile(os.path.join(path, "saved_model.pb"))


def test_local_archive_and_its_replacement(tmp_path: Path, cache: Path) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(tar_members(("saved_model.pb", b"one")))
    storage = HubStorage(str(archive), str(cache))
    first = storage.local_path(1)
    assert Path(first, "saved_model.pb").read_bytes() == b"one"
    archive.write_bytes(tar_members(("saved_model.pb", b"two!")))
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = storage.local_path(1)
    assert second != first and Path(second, "saved_model.pb").read_bytes() == b"two!"
    with pytest.raises(HubError, match="Could not find base path"):
        HubStorage(str(tmp_path / "missing.tar.gz"), str(cache)).versions()


def test_waits_for_another_downloader(hub: HubServer, cache: Path) -> None:
    """A lock held by another process: wait, then use what it downloaded."""
    handle = hub.add("/m/1", tar_members(*MODEL))
    target = cache / hashlib.sha1(handle.encode()).hexdigest()
    cache.mkdir()
    Path(f"{target}.lock").write_text("otherhost.1.abc")
    result: list[str] = []
    waiter = threading.Thread(
        target=lambda: result.append(HubStorage(handle, str(cache), lock_poll_s=0.05).local_path(1))
    )
    waiter.start()
    time.sleep(0.3)
    assert not result
    (target / "variables").mkdir(parents=True)
    (target / "saved_model.pb").write_bytes(b"theirs")
    os.remove(f"{target}.lock")
    waiter.join(5)
    assert result == [str(target)] and hub.requests == []


def test_steals_a_stalled_lock(hub: HubServer, cache: Path) -> None:
    handle = hub.add("/m/1", tar_members(*MODEL))
    target = cache / hashlib.sha1(handle.encode()).hexdigest()
    cache.mkdir()
    Path(f"{target}.lock").write_text("deadhost.1.abc")
    storage = HubStorage(handle, str(cache), lock_timeout_s=0.2, lock_poll_s=0.05)
    assert storage.local_path(1) == str(target)
    assert not Path(f"{target}.lock").exists() and len(hub.requests) == 1


# ------------------------------------------------------------------ bad input


def hostile(name: str) -> list:
    return {
        "dotdot": [*MODEL, ("../escaped.txt", b"x")],
        "dotdot_inside": [*MODEL, ("variables/../../escaped.txt", b"x")],
        "absolute": [*MODEL, ("/tmp/escaped-absolute.txt", b"x")],
        "symlink_out": [*MODEL, link("variables/evil", "/etc/passwd")],
        "symlink_dir_then_write": [*MODEL, link("out", ".."), ("out/escaped.txt", b"x")],
        "hardlink_out": [*MODEL, link("evil", "../outside.txt", hard=True)],
        "device": [*MODEL, device("null")],
    }[name]


@pytest.mark.parametrize(
    "kind",
    [
        "dotdot",
        "dotdot_inside",
        "absolute",
        "symlink_out",
        "symlink_dir_then_write",
        "hardlink_out",
        "device",
    ],
)
def test_hostile_archives_are_refused(hub: HubServer, tmp_path: Path, kind: str) -> None:
    cache = tmp_path / "deep" / "cache"
    handle = hub.add(f"/{kind}/1", tar_members(*hostile(kind)))
    before = tree(tmp_path)
    with pytest.raises(HubError) as err:
        HubStorage(handle, str(cache)).local_path(1)
    assert err.value.code == 3
    assert "refused" in str(err.value) or "'..'" in str(err.value)
    # Nothing written anywhere: no partial extraction, lock or temporary folder left.
    assert tree(tmp_path) - before <= {"deep", "deep/cache"}
    assert not os.path.exists("/tmp/escaped-absolute.txt")


def test_truncated_archive(hub: HubServer, cache: Path) -> None:
    data = tar_members(*MODEL, ("variables/variables.data-00000-of-00001", os.urandom(50_000)))
    handle = hub.add("/trunc/1", data[: len(data) // 2])
    with pytest.raises(HubError, match=r"truncated or corrupt|not a readable tar") as err:
        HubStorage(handle, str(cache)).local_path(1)
    assert handle in str(err.value)
    assert os.listdir(cache) == []


def test_not_an_archive(hub: HubServer, cache: Path) -> None:
    handle = hub.add("/html/1", b"<html>hello</html>")
    with pytest.raises(HubError, match="not a readable tar archive"):
        HubStorage(handle, str(cache)).local_path(1)


def test_archive_that_is_not_a_model_is_not_cached(hub: HubServer, cache: Path) -> None:
    handle = hub.add("/readme/1", tar_members(("README.md", b"hi"), ("data/x.csv", b"1")))
    with pytest.raises(HubError, match=r"is not a model: .*found: README.md, data") as err:
        HubStorage(handle, str(cache)).local_path(1)
    assert err.value.code == 3
    assert os.listdir(cache) == []


@pytest.mark.parametrize(
    ("handle", "message", "code"),
    [
        ("http://[::1/m/1", "malformed model URL", 3),
        ("https:///m/1", "malformed model URL 'https:///m/1': no host", 3),
        ("http://127.0.0.1:99999/m/1", "malformed model URL", 3),
        ("http://127.0.0.1:1/m/1", "cannot reach http://127.0.0.1:1/m/1", 14),
    ],
)
def test_bad_urls(cache: Path, handle: str, message: str, code: int) -> None:
    with pytest.raises(HubError, match=message.replace("[", r"\[")) as err:
        HubStorage(handle, str(cache)).local_path(1)
    assert err.value.code == code


def test_missing_handle(hub: HubServer, cache: Path) -> None:
    with pytest.raises(HubError, match="HTTP 404") as err:
        HubStorage(hub.url + "/nothing/3", str(cache)).local_path(3)
    assert err.value.code == 5


def test_unknown_scheme_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="File system scheme 'ftp' not implemented"):
        open_storage("ftp://host/models/m", str(tmp_path))
    (tmp_path / "4").mkdir()
    assert list(open_storage(f"file://{tmp_path}", str(tmp_path)).versions()) == [4]


def test_tarfile_data_filter_is_available() -> None:
    assert hasattr(tarfile, "data_filter")


def test_a_dead_local_holder_loses_its_lock_at_once(hub: HubServer, cache: Path) -> None:
    """A lock left by a crashed process of this host is not waited on for ten minutes."""
    handle = hub.add("/m/1", tar_members(*MODEL))
    target = cache / hashlib.sha1(handle.encode()).hexdigest()
    cache.mkdir()
    Path(f"{target}.lock").write_text(f"{socket.gethostname()}.{2**22 + 12345}.abc")
    started = time.monotonic()
    assert HubStorage(handle, str(cache)).local_path(1) == str(target)
    assert time.monotonic() - started < 5


def test_concurrent_loads_download_once(hub: HubServer, cache: Path) -> None:
    handle = hub.add("/m/1", tar_members(*MODEL))
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                HubStorage(handle, str(cache), lock_poll_s=0.05).local_path(1)
            )
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(set(results)) == 1 and len(results) == 4
    assert len(hub.requests) == 1
