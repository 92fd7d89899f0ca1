"""Safe extraction of model archives (`.tar`, `.tar.gz`) into a cache folder.

A model archive comes from outside the server, so every member goes through
Python's own `data` extraction filter (no absolute paths, nothing resolving
outside the destination, no device files or FIFOs, links only to targets
inside) plus one stricter rule: no `..` component at all, even one that would
resolve inside. The archive is read as a stream, so a download is extracted
while it arrives and never held whole in memory or on disk.
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from collections.abc import Callable
from typing import IO, cast

# Files whose presence makes a folder something the loaders can serve.
MODEL_MARKERS = ("saved_model.pb", "saved_model.pbtxt", "tfhub_module.pb")


class ArchiveError(Exception):
    """The archive is unsafe, corrupt or not a model; the message says which."""

    def __init__(self, message: str, code: int = 3) -> None:  # 3 = INVALID_ARGUMENT
        super().__init__(message)
        self.code = code


def _short(name: str, limit: int = 80) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _strict_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    name = member.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        # The data filter would strip the slash; an archive that asks for it is hostile.
        raise ArchiveError(f"archive member {_short(member.name)!r} has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise ArchiveError(f"archive member {_short(member.name)!r} has a '..' path component")
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        raise ArchiveError(f"archive member {_short(member.name)!r}: {exc}") from None


def extract_tar(
    fileobj: IO[bytes],
    dest: str,
    source: str,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Extract the tar stream `fileobj` (any compression tarfile reads) into `dest`.

    `dest` must exist and be empty; on any error it may hold a partial
    extraction, which the caller removes. `source` names the archive in errors.
    """
    dest = os.path.realpath(dest)
    stream = cast("IO[bytes]", _Counting(fileobj, on_bytes)) if on_bytes else fileobj
    try:
        with tarfile.open(mode="r|*", fileobj=stream) as tar:
            tar.extraction_filter = _strict_filter
            tar.errorlevel = 2  # every error is fatal: no silently skipped members
            tar.extractall(dest)
    except ArchiveError as exc:
        raise ArchiveError(f"{source}: refused {exc}") from None
    except tarfile.FilterError as exc:
        raise ArchiveError(f"{source}: refused archive member: {exc}") from None
    except (EOFError, zlib.error, tarfile.StreamError) as exc:
        raise ArchiveError(f"{source} is truncated or corrupt: {exc}") from None
    except (tarfile.ReadError, tarfile.CompressionError) as exc:
        if "unexpected end" in str(exc):
            raise ArchiveError(f"{source} is truncated or corrupt: {exc}") from None
        raise ArchiveError(f"{source} is not a readable tar archive: {exc}") from None
    except tarfile.TarError as exc:
        raise ArchiveError(f"{source}: bad tar archive: {exc}") from None


def model_root(path: str, source: str) -> str:
    """The folder of `path` that holds the model: `path` itself, or its only subfolder.

    Raises ArchiveError naming what was found when neither holds a model.
    """
    if any(os.path.isfile(os.path.join(path, m)) for m in MODEL_MARKERS):
        return path
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise ArchiveError(f"{source}: cannot read {path}: {exc.strerror or exc}", 5) from None
    if len(entries) == 1:
        inner = os.path.join(path, entries[0])
        if os.path.isdir(inner) and any(
            os.path.isfile(os.path.join(inner, m)) for m in MODEL_MARKERS
        ):
            return inner
    found = ", ".join(_short(e, 40) for e in entries[:5]) or "nothing"
    if len(entries) > 5:
        found += f", ... ({len(entries)} entries)"
    raise ArchiveError(
        f"{source} is not a model: no saved_model.pb or tfhub_module.pb in it (found: {found})"
    )


class _Counting:
    """A read-only stream that reports how many bytes passed (download progress)."""

    def __init__(self, raw: IO[bytes], on_bytes: Callable[[int], None]) -> None:
        self._raw = raw
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._on_bytes(len(data))
        return data
