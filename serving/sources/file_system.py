"""Listing a model's base path: numbered version folders and their fingerprints.

Only folders whose whole name is a non-negative integer are versions (TF
Serving's rule); `tmp.1`, `.incoming`, files and symlinks to files are ignored.
The fingerprint goes to the manager with each aspired version, so it can retry
a version whose load failed once its files change (a copy that was still in
progress when we first looked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class VersionDir:
    version: int
    path: str


def parse_version(name: str) -> int | None:
    if not name.isdigit() or not name.isascii():
        return None
    try:
        return int(name)
    except ValueError:  # pragma: no cover - isdigit already guards
        return None


def list_versions(base_path: str) -> dict[int, VersionDir]:
    """Numbered version folders under `base_path`; raises OSError if unreadable.

    When two names denote one number (`1` and `001`), the shorter name wins so
    the choice is stable across polls.
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
