"""URL helpers every storage shares (a leaf module: the package and its storages import it)."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(base_path: str) -> str:
    """The URL scheme, or '' for a local path (Windows drive letters are not schemes).

    A pattern, not `urlsplit`, so that a malformed URL still names its scheme
    and its problem is reported by the storage that reads it.
    """
    match = _SCHEME.match(base_path)
    return match.group(1).lower() if match else ""
