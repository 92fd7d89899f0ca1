"""The seam between a source and its target (the manager).

A source finds a model's versions in storage, applies the model's version
policy and calls `target.set_aspired_versions(name, {version: AspiredVersion})`
with the complete set to serve now (empty: unload everything). It knows
nothing of the target beyond `AspiredVersionsTarget`, which the manager
satisfies.

Each aspired version carries a fingerprint of its files, computed by the
source on its own thread: the manager compares fingerprints to retry a version
whose load failed once its files change (a copy still in progress when first
seen), without touching storage itself, least of all under its lock. A source
that cannot tell gives None, and a failed version is then retried only by the
retry policy.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AspiredVersion:
    path: str
    fingerprint: Hashable | None = None


class AspiredVersionsTarget(Protocol):
    def set_aspired_versions(self, name: str, aspired: Mapping[int, AspiredVersion]) -> None:
        """The complete set of versions of `name` that should be served now."""


class SourceTarget(AspiredVersionsTarget, Protocol):
    def set_source_error(self, name: str, error: str | None) -> None:
        """Why `name`'s base path cannot be listed now (None: it can again), for its status."""
