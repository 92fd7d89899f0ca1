"""TF Hub handles and model archives as model base paths.

A base path may be a TF Hub-style handle or URL (`https://host/publisher/model/2`,
`https://host/model.tar.gz`), a `gs://.../model.tar.gz` object or a local
`.tar.gz`/`.tar`. It serves one version: the handle's trailing number
(`.../nnlm-en-dim128/2` is version 2), else 1.

Downloads follow the `tensorflow_hub` library's compressed-module protocol
exactly, so its cache and ours are one: the URL is fetched with
`?tf-hub-format=compressed` and extracted into `<cache>/<sha1(handle)>`, where
`<cache>` is `$TFHUB_CACHE_DIR` or `<tmp>/tfhub_modules`; one downloader at a
time holds `<sha1>.lock` (contents `host.pid.uid`), extracts into
`<sha1>.<uid>.tmp`, writes `<sha1>.descriptor.txt` and renames the temporary
folder into place; a non-empty module folder is a finished download. The
library itself is not used at run time: it imports TensorFlow and absl flags
(the storage layer imports neither), streams members without an extraction
filter, and cannot open local archives; the tests check that each side reuses
the other's cache.

Unlike the library, an archive that is not a model is never cached: it would
otherwise fail every later load without a new download.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import IO, cast

from serving.storage import scheme_of
from serving.storage.archive import ArchiveError, extract_tar, model_root
from serving.storage.errors import StorageError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_COMPRESSED_QUERY = ("tf-hub-format", "compressed")
# gRPC status codes carried by HubError into the version's status.
INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNIMPLEMENTED, UNAVAILABLE = 3, 5, 7, 12, 14

Opener = Callable[[str], IO[bytes]]


class HubError(StorageError):
    """A handle that cannot be resolved; `code` is the gRPC status code for its status."""

    def __init__(self, message: str, code: int = UNAVAILABLE) -> None:
        super().__init__(message, transient=code == UNAVAILABLE)
        self.code = code


def tfhub_cache_dir() -> str:
    """`$TFHUB_CACHE_DIR`, else `tensorflow_hub`'s own default, `<tmp>/tfhub_modules`."""
    return os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")


def is_hub_handle(path: str) -> bool:
    """True for an http(s) URL, a `gs://` archive or a local archive file.

    Any http(s) URL counts, even a malformed one, so that its problem is
    reported by `HubStorage` rather than mistaken for a missing folder.
    """
    scheme = scheme_of(path)
    if scheme in ("http", "https"):
        return True
    if scheme == "gs":
        return _is_archive_name(_url_path(path))
    if not scheme:
        return _is_archive_name(path) and not os.path.isdir(path)
    return False


def _url_path(url: str) -> str:
    """The path part of a URL, even of a malformed one (never raises)."""
    rest = url.split("://", 1)[1]
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    return "/" + rest.split("/", 1)[1] if "/" in rest else ""


def _is_archive_name(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def handle_version(handle: str) -> int:
    """The trailing number of the handle's path, else 1."""
    path = _url_path(handle) if scheme_of(handle) else handle
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return int(last) if last.isascii() and last.isdigit() else 1


def module_dir(handle: str, cache_dir: str) -> str:
    """Where `tensorflow_hub` caches `handle`: the SHA-1 hex of the handle as given."""
    return os.path.join(cache_dir, hashlib.sha1(handle.encode("utf8")).hexdigest())


class HubStorage:
    """A handle or archive as a base path with exactly one version.

    `local_path` blocks (call it on a load thread): it downloads and extracts
    once, then returns the cached folder on every later call, in this process
    and in any other using the same cache, `hub.load()` included.
    `opener` reads `gs://` archives (the object-storage layer's reader); without
    one, `fsspec` is used when installed.
    """

    def __init__(
        self,
        handle: str,
        cache_dir: str | None = None,
        *,
        opener: Opener | None = None,
        timeout_s: float = 60.0,
        lock_timeout_s: float = 600.0,
        lock_poll_s: float = 0.5,
    ) -> None:
        self.base_path = handle
        self.cache_dir = cache_dir or tfhub_cache_dir()
        self.version = handle_version(handle)
        self._scheme = scheme_of(handle)
        self._opener = opener
        self._timeout_s = timeout_s
        self._lock_timeout_s = lock_timeout_s
        self._lock_poll_s = lock_poll_s

    # ------------------------------------------------------------ interface

    def versions(self) -> dict[int, str]:
        """{version: handle}; a missing local archive is a missing base path."""
        if not self._scheme and not os.path.isfile(self.base_path):
            raise HubError(
                f"Could not find base path {self.base_path}: no such archive file", NOT_FOUND
            )
        return {self.version: self.base_path}

    def fingerprint(self, version: int) -> tuple:
        if not self._scheme:
            try:
                st = os.stat(self.base_path)
            except OSError:
                return (self.base_path,)
            return (self.base_path, st.st_size, st.st_mtime_ns)
        return (self.base_path,)  # a published handle's content never changes

    def retain(self, versions: set[int]) -> None:
        """Nothing to drop: the TF Hub cache is shared with `tensorflow_hub` and other servers."""

    @property
    def module_dir(self) -> str:
        """The cache folder of this handle (a local archive also keys on its size and mtime)."""
        key = self.base_path
        if not self._scheme:
            # A replaced local archive must not be served from the old extraction.
            stamp = ",".join(str(part) for part in self.fingerprint(self.version)[1:])
            key = f"{os.path.abspath(self.base_path)}?stat={stamp}"
        return module_dir(key, self.cache_dir)

    def local_path(self, version: int) -> str:
        if version != self.version:
            raise HubError(
                f"{self.base_path} has only version {self.version}, not {version}", NOT_FOUND
            )
        self._check_url()
        target = self.module_dir
        if not _has_content(target):
            self._atomic_download(target)
        try:
            return model_root(target, self.base_path)
        except ArchiveError as exc:
            raise HubError(str(exc), exc.code) from None

    # ------------------------------------------------------- download protocol

    def _atomic_download(self, target: str) -> None:
        """`tensorflow_hub`'s lock / temporary folder / rename protocol."""
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as exc:
            raise HubError(
                f"cannot create the cache folder {self.cache_dir}: {exc.strerror or exc}",
                PERMISSION_DENIED,
            ) from None
        lock = os.path.abspath(target) + ".lock"
        uid = uuid.uuid4().hex
        contents = f"{socket.gethostname()}.{os.getpid()}.{uid}"
        tmp_dir = f"{os.path.abspath(target)}.{uid}.tmp"
        try:
            while True:
                if _create_exclusive(lock, contents):
                    if _has_content(target):
                        return  # another process finished while we waited
                    if os.path.exists(target):
                        shutil.rmtree(target)
                    break
                self._wait_for_lock(lock)
            os.makedirs(tmp_dir)
            self._download(tmp_dir)
            model_root(tmp_dir, self.base_path)  # not a model: refuse before caching
            _write_descriptor(self.base_path, target)
            try:
                os.rename(tmp_dir, target)
            except OSError:
                log.warning("module already exists in %s", target)
        except ArchiveError as exc:
            raise HubError(str(exc), exc.code) from None
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            if _read(lock) == contents:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)

    def _wait_for_lock(self, lock: str) -> None:
        """Wait while another downloader holds the lock; steal it when it stalls.

        Stalled means the lock's temporary folder did not grow and the lock did
        not change for `lock_timeout_s` (the library's rule and default).
        """
        checked_at = time.monotonic()
        last_size, last_contents = -1, None
        logged = False
        while os.path.exists(lock):
            contents = _read(lock)
            if contents is not None and _holder_is_gone(contents):
                log.warning("deleting lock file %s: its process %s has exited", lock, contents)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                return
            if not logged:
                log.info("%s is being downloaded by %s; waiting", self.base_path, contents)
                logged = True
            if time.monotonic() - checked_at > self._lock_timeout_s:
                uid = (contents or "").rsplit(".", 1)[-1]
                size = _dir_size(f"{lock[: -len('.lock')]}.{uid}.tmp")
                if size == last_size and contents == last_contents:
                    log.warning("deleting lock file %s due to inactivity", lock)
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(lock)
                    return
                last_size, last_contents, checked_at = size, contents, time.monotonic()
            time.sleep(self._lock_poll_s)

    def _download(self, dest: str) -> None:
        started = time.monotonic()
        received = 0

        def count(n: int) -> None:
            nonlocal received
            received += n

        log.info("downloading %s into %s", self.base_path, dest)
        with self._open() as stream:
            extract_tar(stream, dest, self.base_path, on_bytes=count)
        log.info(
            "downloaded %s: %d bytes in %.2fs",
            self.base_path,
            received,
            time.monotonic() - started,
            extra={
                "fields": {
                    "event": "hub_download",
                    "handle": self.base_path,
                    "bytes": received,
                    "seconds": round(time.monotonic() - started, 3),
                }
            },
        )

    def _open(self) -> IO[bytes]:
        if not self._scheme:
            try:
                return open(self.base_path, "rb")
            except OSError as exc:
                raise HubError(
                    f"cannot read {self.base_path}: {exc.strerror or exc}", NOT_FOUND
                ) from None
        if self._scheme in ("http", "https"):
            return self._open_url()
        if self._opener is not None:
            return self._opener(self.base_path)
        try:
            import fsspec
        except ImportError:
            raise HubError(
                f"{self.base_path}: reading {self._scheme}:// archives needs the "
                "object-storage support (fsspec with gcsfs)",
                UNIMPLEMENTED,
            ) from None
        try:
            return cast(IO[bytes], fsspec.open(self.base_path, "rb").open())
        except Exception as exc:  # fsspec backends raise their own types
            raise HubError(f"cannot read {self.base_path}: {exc}", UNAVAILABLE) from None

    def _open_url(self) -> IO[bytes]:
        url = append_compressed_query(self.base_path)
        context = ssl.create_default_context()
        if os.environ.get("TFHUB_DISABLE_CERT_VALIDATION") == "true":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            return urllib.request.urlopen(  # type: ignore[no-any-return,unused-ignore]
                urllib.request.Request(url), timeout=self._timeout_s, context=context
            )
        except urllib.error.HTTPError as exc:
            code = NOT_FOUND if exc.code in (404, 410) else UNAVAILABLE
            if exc.code in (401, 403):
                code = PERMISSION_DENIED
            raise HubError(
                f"downloading {self.base_path} failed: HTTP {exc.code} {exc.reason}", code
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HubError(f"cannot reach {self.base_path}: {reason}", UNAVAILABLE) from None

    def _check_url(self) -> None:
        """Refuse a malformed URL before touching the cache."""
        if self._scheme not in ("http", "https"):
            return
        try:
            parts = urllib.parse.urlsplit(self.base_path)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            raise HubError(
                f"malformed model URL {_excerpt(self.base_path)}: {exc}", INVALID_ARGUMENT
            ) from None
        if not parts.hostname or any(c.isspace() for c in self.base_path):
            raise HubError(
                f"malformed model URL {_excerpt(self.base_path)}: "
                + ("no host" if not parts.hostname else "whitespace in the URL"),
                INVALID_ARGUMENT,
            )


def append_compressed_query(handle: str) -> str:
    """The handle with `tf-hub-format=compressed` appended to its query (as the library does)."""
    parsed = list(urllib.parse.urlparse(handle))
    query = urllib.parse.parse_qsl(parsed[4])
    query.append(_COMPRESSED_QUERY)
    parsed[4] = urllib.parse.urlencode(query)
    return urllib.parse.urlunparse(parsed)


def _excerpt(text: str, limit: int = 100) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _has_content(path: str) -> bool:
    try:
        return os.path.isdir(path) and bool(os.listdir(path))
    except OSError:
        return False


def _create_exclusive(path: str, contents: str) -> bool:
    """Write `contents` to `path` unless it exists, atomically (no reader sees it half written)."""
    staging = f"{path}.tmp{uuid.uuid4().hex}"
    with open(staging, "w") as f:
        f.write(contents)
    try:
        os.link(staging, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(staging)


def _holder_is_gone(contents: str) -> bool:
    """True when the lock was taken by a process of this host that no longer runs.

    Saves the library's ten-minute stall wait after a crash (a restarted
    server finds its own dead lock); locks of other hosts are left to that wait.
    """
    host, _, rest = contents.rpartition(".")[0].rpartition(".")
    try:
        pid = int(rest)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _dir_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def _write_descriptor(handle: str, target: str) -> None:
    """`<sha1>.descriptor.txt`: who downloaded what, when (informational, as in the library)."""
    text = (
        f"Module: {handle}\nDownload Time: {datetime.datetime.today()}\n"
        f"Downloader Hostname: {socket.gethostname()} (PID:{os.getpid()})"
    )
    path = f"{target}.descriptor.txt"
    staging = f"{path}.tmp{uuid.uuid4().hex}"
    with open(staging, "w") as f:
        f.write(text)
    os.replace(staging, path)
