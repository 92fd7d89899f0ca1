"""Object-storage base paths (s3://, gs://, az:// / abfs://) through fsspec.

Library: fsspec with s3fs, gcsfs and adlfs. Each backend rides on its cloud's
own SDK credential chain (botocore: env vars, `~/.aws` profiles, IRSA /
web-identity, instance roles; google-auth: application default credentials,
workload identity; azure-identity: env vars, workload identity, managed
identity), which is what "credentials from the standard sources" means in
practice; obstore's Rust client reads env vars and instance metadata but not
AWS profiles. fsspec is also the common interface of the Python data stack, so
HTTP (for TF Hub URLs) comes with the same API, and all three install beside
TensorFlow without touching numpy, protobuf or grpcio.

A version is listed (aspired) only once it is complete: a model file
(`saved_model.pb`, `saved_model.pbtxt` or `model.tflite`) is present, every
`variables.data-K-of-N` shard named by the index is there, and the listing of
its objects (key, size, ETag) did not change between two polls, so a version
still being uploaded object by object is never loaded half. Once listed it
stays listed while its folder exists.

A listed version is downloaded once into the cache, atomically: into a
temporary folder, each object's size checked, a marker with the listing's
fingerprint written, then renamed into place. A cached copy whose marker
matches the current listing is reused (a restarted server downloads nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serving.storage import events
from serving.storage.errors import StorageError
from serving.storage.events import DownloadObserver
from serving.storage.local import parse_version

log = logging.getLogger(__name__)

MARKER = ".model-server-version.json"
MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "model.tflite")
# Whole versions downloading at once, across all models (the load pool bounds it too).
MAX_PARALLEL_DOWNLOADS = 2
PROGRESS_EVERY_S = 5.0

_downloads = threading.BoundedSemaphore(MAX_PARALLEL_DOWNLOADS)
_SHARD = re.compile(r"^variables/variables\.data-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class RemoteFile:
    key: str  # full path as the filesystem names it (bucket/prefix/m/1/saved_model.pb)
    size: int
    tag: str  # ETag / generation / mtime: changes when the object is rewritten


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def s3_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs options from the standard variables and TF Serving's S3_* ones.

    `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (the AWS SDKs' names) or TF
    Serving's `S3_ENDPOINT` (host[:port], `S3_USE_HTTPS`, `S3_VERIFY_SSL`)
    point at an S3-compatible server (MinIO, Ceph); such servers get
    path-style addressing. Credentials and region stay botocore's business.
    """
    env = os.environ if env is None else env
    client: dict[str, Any] = {}
    config: dict[str, Any] = {
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"max_attempts": 3, "mode": "standard"},
    }
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint and env.get("S3_ENDPOINT"):
        endpoint = env["S3_ENDPOINT"]
        if "://" not in endpoint:
            https = _truthy(env.get("S3_USE_HTTPS"), True)
            endpoint = f"{'https' if https else 'http'}://{endpoint}"
    if endpoint:
        client["endpoint_url"] = endpoint
        config["s3"] = {"addressing_style": "path"}
    if not _truthy(env.get("S3_VERIFY_SSL"), True):
        client["verify"] = False
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    return {
        "client_kwargs": client,
        "config_kwargs": config,
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }


def filesystem(base_path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without scheme) for `base_path`."""
    import fsspec

    scheme = base_path.split("://", 1)[0].lower()
    options: dict[str, Any] = {"skip_instance_cache": True}
    if scheme == "s3":
        options = s3_options()
    elif scheme in ("gs", "gcs"):
        options["use_listings_cache"] = False
    elif scheme in ("az", "abfs", "abfss"):
        options["use_listings_cache"] = False
        # adlfs takes the account from the URL (container@account...) or these.
        if os.environ.get("AZURE_STORAGE_ACCOUNT_NAME"):
            options.setdefault("account_name", os.environ["AZURE_STORAGE_ACCOUNT_NAME"])
    try:
        fs, path = fsspec.core.url_to_fs(base_path, **options)
    except ImportError as exc:
        raise StorageError(
            f"No filesystem for {scheme}:// is installed ({exc})", transient=False
        ) from None
    except Exception as exc:  # malformed URL, or no account/credentials configured
        raise StorageError(f"Cannot open base path {base_path}: {exc}") from None
    return fs, path.rstrip("/")


def describe_error(exc: BaseException) -> str:
    """A short, actionable reason: not found, denied, unreachable, or the SDK's own words."""
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, FileNotFoundError) or "nosuchbucket" in lowered:
        reason = "bucket or path does not exist"
    elif isinstance(exc, PermissionError) or "accessdenied" in lowered or "forbidden" in lowered:
        reason = "access denied (check the credentials)"
    elif any(
        word in lowered or word in name.lower()
        for word in ("connect", "timeout", "timed out", "unreachable", "name or service")
    ):
        reason = "storage endpoint unreachable"
    else:
        reason = name
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{reason}: {text}"


def is_complete(files: Mapping[str, RemoteFile]) -> bool:
    """A model file, and every variables shard the shard names announce (see module doc)."""
    if not any(name in files for name in MODEL_FILES):
        return False
    shards: dict[int, set[int]] = {}
    for rel in files:
        match = _SHARD.match(rel)
        if match:
            shards.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    has_index = "variables/variables.index" in files
    if has_index != bool(shards):
        return False
    return all(found == set(range(total)) for total, found in shards.items())


def fingerprint_of(files: Mapping[str, RemoteFile]) -> tuple:
    return tuple(sorted((rel, f.size, f.tag) for rel, f in files.items()))


def _tag(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "content_settings", "LastModified"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    return str(info.get("mtime") or info.get("last_modified") or "")


def cache_folder(cache_dir: str, base_path: str) -> str:
    """One folder per base path: a readable tail and a hash of the whole URL."""
    digest = hashlib.sha256(base_path.encode()).hexdigest()[:12]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", base_path.split("://", 1)[-1])[-60:].strip("_.")
    return os.path.join(cache_dir, f"{tail}-{digest}")


class RemoteStorage:
    def __init__(self, base_path: str, cache_dir: str) -> None:
        self.base_path = base_path.rstrip("/")
        self._scheme = self.base_path.split("://", 1)[0].lower()
        self._fs, self._root = filesystem(self.base_path)
        self._cache = cache_folder(cache_dir, self.base_path)
        self._lock = threading.Lock()
        self._files: dict[int, dict[str, RemoteFile]] = {}
        self._names: dict[int, str] = {}
        self._seen: dict[int, tuple] = {}  # fingerprint at the previous poll
        self._released: set[int] = set()
        self._waiting: set[int] = set()  # seen, not yet complete (logged once)
        self._version_locks: dict[int, threading.Lock] = {}
        self._remove_stale_temporaries()

    # ---------------------------------------------------------------- listing

    def versions(self) -> dict[int, str]:
        try:
            listing = self._fs.find(self._root, detail=True, withdirs=False)
        except Exception as exc:  # every SDK has its own error types
            raise StorageError(
                f"Could not list base path {self.base_path}: {describe_error(exc)}"
            ) from None
        grouped: dict[int, dict[str, RemoteFile]] = {}
        names: dict[int, str] = {}
        prefix = self._root + "/"
        for key, info in listing.items():
            key = key.rstrip("/")
            if not key.startswith(prefix):
                continue
            name, _, rel = key[len(prefix) :].partition("/")
            number = parse_version(name)
            if number is None or not rel or rel.endswith("/") or MARKER in rel:
                continue
            if number in names and names[number] != name:
                if len(name) >= len(names[number]):
                    continue  # `1` beats `001`, as on disk
                grouped.pop(number)
            names[number] = name
            grouped.setdefault(number, {})[rel] = RemoteFile(
                key, int(info.get("size") or 0), _tag(info)
            )
        found: dict[int, str] = {}
        with self._lock:
            for number, files in grouped.items():
                stamp = fingerprint_of(files)
                previous, self._seen[number] = self._seen.get(number), stamp
                ready = number in self._released or (
                    is_complete(files) and (stamp == previous or self._cached_as(number, stamp))
                )
                if not ready:
                    if number not in self._waiting:
                        self._waiting.add(number)
                        log.info(
                            "%s: version %d seen; taken up once its upload is complete",
                            self.base_path,
                            number,
                        )
                    continue
                if number not in self._released:
                    log.info(
                        "%s: version %d is complete (%d objects, %d bytes)",
                        self.base_path,
                        number,
                        len(files),
                        sum(f.size for f in files.values()),
                    )
                self._released.add(number)
                found[number] = f"{self.base_path}/{names[number]}"
            self._files, self._names = grouped, names
            self._released &= set(grouped)
            self._waiting &= set(grouped) - self._released
            self._seen = {n: s for n, s in self._seen.items() if n in grouped}
        return found

    def fingerprint(self, version: int) -> tuple:
        with self._lock:
            return fingerprint_of(self._files.get(version, {}))

    @property
    def pending(self) -> bool:
        """Versions seen but not listed yet (incomplete, or changed since the last poll)."""
        with self._lock:
            return bool(set(self._files) - self._released)

    # ------------------------------------------------------------------ cache

    def _final(self, version: int) -> str:
        return os.path.join(self._cache, str(version))

    def _cached_as(self, version: int, stamp: tuple) -> bool:
        """True if the cache holds this version with exactly this listing."""
        try:
            with open(os.path.join(self._final(version), MARKER)) as f:
                marker = json.load(f)
        except (OSError, ValueError):
            return False
        return tuple(tuple(row) for row in marker.get("fingerprint", ())) == stamp

    def local_path(self, version: int) -> str:
        with self._lock:
            files = dict(self._files.get(version, {}))
            lock = self._version_locks.setdefault(version, threading.Lock())
        if not files:
            raise StorageError(f"Version {version} not found under {self.base_path}")
        stamp = fingerprint_of(files)
        with lock:
            final = self._final(version)
            if self._cached_as(version, stamp):
                log.info(
                    "%s version %d: using the cached copy in %s", self.base_path, version, final
                )
                _metrics().cache_hit(self._scheme)
                return final
            if not is_complete(files):
                raise StorageError(
                    f"Version {version} under {self.base_path} is incomplete "
                    f"(no {' / '.join(MODEL_FILES)} or missing variables shards)"
                )
            with _downloads:
                self._download(version, files, stamp)
            return final

    def _download(self, version: int, files: Mapping[str, RemoteFile], stamp: tuple) -> None:
        final = self._final(version)
        os.makedirs(self._cache, exist_ok=True)
        temporary = os.path.join(
            self._cache, f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        total = sum(f.size for f in files.values())
        done = 0
        started = last_report = time.monotonic()
        log.info(
            "%s version %d: downloading %d objects (%d bytes) into %s",
            self.base_path,
            version,
            len(files),
            total,
            final,
        )
        metrics = _metrics()
        try:
            for rel, remote in sorted(files.items()):
                target = os.path.join(temporary, *rel.split("/"))
                if not os.path.realpath(target).startswith(os.path.realpath(temporary) + os.sep):
                    raise StorageError(f"Refusing object {remote.key}: path leaves the cache")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    self._fs.get_file(remote.key, target)
                except Exception as exc:
                    raise StorageError(
                        f"Could not download {self._scheme}://{remote.key}: {describe_error(exc)}"
                    ) from None
                size = os.path.getsize(target)
                if size != remote.size:
                    raise StorageError(
                        f"Object {self._scheme}://{remote.key} changed while downloading "
                        f"({size} bytes, listed {remote.size})"
                    )
                done += size
                metrics.downloaded(self._scheme, size)
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_S:
                    last_report = now
                    log.info(
                        "%s version %d: %d of %d bytes after %.1fs",
                        self.base_path,
                        version,
                        done,
                        total,
                        now - started,
                    )
            with open(os.path.join(temporary, MARKER), "w") as f:
                json.dump({"base_path": self.base_path, "fingerprint": stamp}, f)
            old = None
            if os.path.exists(final):
                old = f"{temporary}.old"
                os.rename(final, old)
            os.rename(temporary, final)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            metrics.download_failed(self._scheme)
            raise
        seconds = time.monotonic() - started
        metrics.download_finished(self._scheme, seconds)
        log.info(
            "%s version %d: downloaded %d bytes in %.2fs",
            self.base_path,
            version,
            done,
            seconds,
            extra={
                "fields": {
                    "event": "storage_download",
                    "base_path": self.base_path,
                    "version": version,
                    "bytes": done,
                    "seconds": round(seconds, 3),
                }
            },
        )

    def retain(self, versions: set[int]) -> None:
        try:
            names = os.listdir(self._cache)
        except OSError:
            return
        for name in names:
            number = parse_version(name)
            if number is None or number in versions:
                continue
            with self._lock:
                lock = self._version_locks.setdefault(number, threading.Lock())
            if not lock.acquire(blocking=False):
                continue  # being downloaded right now; the next poll decides
            try:
                shutil.rmtree(os.path.join(self._cache, name), ignore_errors=True)
                log.info(
                    "%s: removed cached version %d (no longer aspired)", self.base_path, number
                )
            finally:
                lock.release()

    def _remove_stale_temporaries(self) -> None:
        """Leftovers of a process that died mid-download (never of a live one)."""
        try:
            names = os.listdir(self._cache)
        except OSError:
            return
        for name in names:
            match = re.match(r"^\.tmp-\d+-(\d+)-", name)
            if match and not _alive(int(match.group(1))):
                shutil.rmtree(os.path.join(self._cache, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _metrics() -> DownloadObserver:
    return events.observer()
