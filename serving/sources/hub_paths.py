"""Base paths that are TF Hub handles or archives, beside local version folders.

The source aspires a handle's single version with the handle itself as its
path; the loader wrapper turns that into a local folder on the load thread
(downloads never run on the poll thread or the request path), so a handle
that cannot be fetched or is not a model fails that version's load and its
error lands in the version's status, while other models keep serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from serving.errors import LoadError
from serving.sources.file_system import VersionDir, list_versions
from serving.storage.hub import UNIMPLEMENTED, HubError, HubStorage, is_hub_handle, scheme_of

S = TypeVar("S")


def list_model_versions(base_path: str) -> dict[int, VersionDir]:
    """Versions under a base path; raises OSError (folders) or HubError (handles)."""
    if is_hub_handle(base_path):
        storage = HubStorage(base_path)
        return {v: VersionDir(v, location) for v, location in storage.versions().items()}
    scheme = scheme_of(base_path)
    if scheme is not None and scheme != "file":
        # TensorFlow's wording for a file system it has no support for.
        raise HubError(
            f"File system scheme '{scheme}' not implemented (file: '{base_path[:200]}')",
            UNIMPLEMENTED,
        )
    if scheme == "file":
        base_path = base_path[len("file://") :]
    return list_versions(base_path)


def resolving_loader(
    loader: Callable[[str, int, str], S],
) -> Callable[[str, int, str], S]:
    """Wrap a loader so a handle path is fetched into the cache before loading."""

    def load(name: str, version: int, path: str) -> S:
        if is_hub_handle(path):
            try:
                path = HubStorage(path).local_path(version)
            except HubError as exc:
                raise LoadError(str(exc), exc.code) from None
        return loader(name, version, path)

    return load
