"""Version policies: from the versions on disk to the versions to serve.

Mirrors TF Serving's ServableVersionPolicy (latest N, all, specific).
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
        return self.versions & set(versions)


VersionPolicy = LatestPolicy | AllPolicy | SpecificPolicy
