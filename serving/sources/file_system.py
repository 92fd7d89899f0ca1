"""Listing a model's base path on local disk (now part of serving.storage.local).

The fingerprint lets the manager retry a version whose load failed once its
files change (a copy that was still in progress when we first looked).
"""

from __future__ import annotations

from serving.storage.local import VersionDir, fingerprint, list_versions, parse_version

__all__ = ["VersionDir", "fingerprint", "list_versions", "parse_version"]
