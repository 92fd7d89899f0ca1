"""Which model, version and signature a request addresses."""

from __future__ import annotations

from dataclasses import dataclass

from serving.manager.manager import ServableRequest


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""

    @property
    def servable_request(self) -> ServableRequest:
        return ServableRequest(self.name, self.version, self.label)
