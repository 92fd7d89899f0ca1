"""Where a model's versions live: a local folder or object storage.

The lowest layer: sources list versions through it, the loader materialises a
version through it (a local directory TensorFlow can read). It imports nothing
from sources, manager or servables.

`open_storage(base_path, cache_dir)` is the one dispatch point on the base
path's form: a local path, `s3://`, `gs://`, `az://` / `abfs://` (and the TF Hub
handles, URLs and tarballs of `serving.storage.hub`, dispatched first).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Protocol, runtime_checkable

from serving.storage import events
from serving.storage.errors import StorageError
from serving.storage.events import DownloadObserver

__all__ = [
    "REMOTE_SCHEMES",
    "DownloadObserver",
    "ModelStorage",
    "StorageError",
    "Storages",
    "default_cache_dir",
    "is_remote",
    "open_storage",
    "set_download_observer",
]

# Object-storage schemes served through fsspec (see serving.storage.remote).
REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")


@runtime_checkable
class ModelStorage(Protocol):
    """One model's base path: which versions it holds and how to get one onto local disk."""

    base_path: str

    def versions(self) -> dict[int, str]:
        """Complete versions: number -> location. Raises StorageError with a clear message
        when the base path cannot be listed (missing bucket, denied, unreachable)."""
        ...

    def fingerprint(self, version: int) -> tuple:
        """Changes whenever the version's content changes (as of the last listing)."""
        ...

    def local_path(self, version: int) -> str:
        """Blocking (the load thread calls it): a local directory holding the version,
        downloaded into the cache first if needed. Raises StorageError."""
        ...

    def retain(self, versions: set[int]) -> None:
        """Only `versions` are still wanted: drop cached copies of the others."""
        ...


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(base_path: str) -> str:
    """The URL scheme, or '' for a local path (Windows drive letters are not schemes).

    A pattern, not `urlsplit`, so that a malformed URL still names its scheme
    and its problem is reported by the storage that reads it.
    """
    match = _SCHEME.match(base_path)
    return match.group(1).lower() if match else ""


def is_remote(base_path: str) -> bool:
    return scheme_of(base_path) not in ("", "file")


def default_cache_dir() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), "model-server-cache")


def open_storage(base_path: str, cache_dir: str) -> ModelStorage:
    """The storage for `base_path`; raises StorageError for a form nothing reads."""
    from serving.storage.hub import HubStorage, is_hub_handle

    if is_hub_handle(base_path):  # TF Hub handles, URLs and tarballs
        return HubStorage(base_path)
    scheme = scheme_of(base_path)
    if scheme in ("", "file"):
        from serving.storage.local import LocalStorage

        return LocalStorage(base_path[len("file://") :] if scheme else base_path)
    if scheme in REMOTE_SCHEMES:
        from serving.storage.remote import RemoteStorage

        return RemoteStorage(base_path, cache_dir)
    # TensorFlow's wording for a file system it has no support for.
    raise StorageError(
        f"File system scheme '{scheme}' not implemented (file: '{base_path[:200]}'): expected "
        "a local path, an s3://, gs://, az:// or abfs:// URL, or a TF Hub handle",
        transient=False,
    )


def set_download_observer(observer: DownloadObserver) -> None:
    """Send cache-fill progress (bytes, seconds, outcomes) to `observer`."""
    events.set_observer(observer)


class Storages:
    """Each base path's storage, opened once and shared by the source and the loader.

    The source lists through `open()`; the manager hands the loader a version's
    location, which `local_path()` maps back to its storage and version.
    """

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self._lock = threading.Lock()
        self._open: dict[str, ModelStorage] = {}
        self._locations: dict[str, tuple[ModelStorage, int]] = {}

    def open(self, base_path: str) -> ModelStorage:
        with self._lock:
            storage = self._open.get(base_path)
            if storage is None:
                storage = self._open[base_path] = open_storage(base_path, self.cache_dir)
            return storage

    def versions(self, base_path: str) -> dict[int, str]:
        """List `base_path` and remember where each location came from."""
        storage = self.open(base_path)
        found = storage.versions()
        with self._lock:
            for number, location in found.items():
                self._locations[location] = (storage, number)
        return found

    def local_path(self, location: str) -> str:
        """A local directory for a listed location (a local location is itself)."""
        with self._lock:
            known = self._locations.get(location)
        if known is None:
            return location
        storage, number = known
        return storage.local_path(number)

    def fingerprint(self, location: str) -> tuple | None:
        """The storage's fingerprint of a location; None for a local folder (the source
        fingerprints its files itself)."""
        from serving.storage.local import LocalStorage

        with self._lock:
            known = self._locations.get(location)
        if known is None or isinstance(known[0], LocalStorage):
            return None
        return known[0].fingerprint(known[1])

    def pending(self) -> bool:
        """True while some remote version waits for another listing to be taken up."""
        with self._lock:
            opened = list(self._open.values())
        return any(getattr(storage, "pending", False) for storage in opened)

    def close(self, base_path: str) -> None:
        """Forget a base path that is no longer configured."""
        with self._lock:
            storage = self._open.pop(base_path, None)
            if storage is not None:
                self._locations = {k: v for k, v in self._locations.items() if v[0] is not storage}
        if storage is not None:
            storage.retain(set())
