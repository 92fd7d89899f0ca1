"""Which model, version and signature a request addresses."""

from __future__ import annotations

from typing import NamedTuple

from serving.manager.manager import ServableRequest


class ModelRef(NamedTuple):
    """Made per request: a NamedTuple, cheaper to build than a frozen dataclass."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""

    @property
    def servable_request(self) -> ServableRequest:
        return ServableRequest(self.name, self.version, self.label)
