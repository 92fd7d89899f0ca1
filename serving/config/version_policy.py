"""Version policies: from the versions a source finds to the versions to serve.

TF Serving's ServableVersionPolicy (latest N, all, specific) as frozen data
with a pure `select`: no storage, no state, so the config layer can own the
policy and any source (local folders, object storage) can apply it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LatestPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: Literal["latest"] = "latest"
    num_versions: int = Field(1, ge=1)

    def select(self, versions: Iterable[int]) -> set[int]:
        return set(sorted(versions)[-self.num_versions :])


class AllPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: Literal["all"] = "all"

    def select(self, versions: Iterable[int]) -> set[int]:
        return set(versions)


class SpecificPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: Literal["specific"] = "specific"
    versions: frozenset[int] = Field(min_length=1)

    def select(self, versions: Iterable[int]) -> set[int]:
        return set(versions) & self.versions


VersionPolicy = LatestPolicy | AllPolicy | SpecificPolicy


def select_versions(policy: VersionPolicy, available: Iterable[int]) -> set[int]:
    """The versions to serve out of `available`."""
    return policy.select(available)


def missing_versions(policy: VersionPolicy, available: Iterable[int]) -> list[int]:
    """Versions a `specific` policy names that are not `available`, in order."""
    if not isinstance(policy, SpecificPolicy):
        return []
    return sorted(policy.versions - set(available))
