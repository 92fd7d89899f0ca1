"""A base path on local disk: listed in place, never copied."""

from __future__ import annotations

import os
from dataclasses import dataclass

from serving.storage.errors import StorageError


@dataclass(frozen=True)
class VersionDir:
    version: int
    path: str


def parse_version(name: str) -> int | None:
    """A version folder's number: its whole name is ASCII digits (TF Serving's rule)."""
    if not name.isdigit() or not name.isascii():
        return None
    return int(name)


def list_versions(base_path: str) -> dict[int, VersionDir]:
    """Numbered version folders under `base_path`; raises OSError if unreadable.

    `tmp.1`, `.incoming`, files and symlinks to files are ignored. When two
    names denote one number (`1` and `001`), the shorter name wins so the
    choice is stable across polls.
    """
    found: dict[int, VersionDir] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            version = parse_version(entry.name)
            if version is None or not entry.is_dir():
                continue
            current = found.get(version)
            if current is None or len(entry.path) < len(current.path):
                found[version] = VersionDir(version, entry.path)
    return found


def fingerprint(path: str) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime_ns) of every file below `path`, sorted."""
    rows: list[tuple[str, int, int]] = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            rows.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(rows))


class LocalStorage:
    """Versions are listed as soon as their folder exists (deploy tools rename a
    staged copy into place; a folder caught mid-copy fails to load and is
    retried when its files change)."""

    def __init__(self, base_path: str) -> None:
        self.base_path = base_path
        self._paths: dict[int, str] = {}

    def versions(self) -> dict[int, str]:
        try:
            found = list_versions(self.base_path)
        except OSError as exc:
            raise StorageError(
                f"Could not find base path {self.base_path}: {exc.strerror or exc}"
            ) from None
        self._paths = {v: d.path for v, d in found.items()}
        return dict(self._paths)

    def fingerprint(self, version: int) -> tuple:
        path = self._paths.get(version)
        return fingerprint(path) if path else ()

    def local_path(self, version: int) -> str:
        path = self._paths.get(version)
        if path is None:
            raise StorageError(f"Version {version} not found under {self.base_path}")
        return path

    def retain(self, versions: set[int]) -> None:
        """Nothing is cached for a local base path."""
