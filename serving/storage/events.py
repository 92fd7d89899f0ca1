"""Where cache-fill progress goes: the server plugs its metrics in here, so the
storage layer imports no metrics code."""

from __future__ import annotations

from typing import Protocol


class DownloadObserver(Protocol):
    def downloaded(self, scheme: str, size: int) -> None: ...
    def download_finished(self, scheme: str, seconds: float) -> None: ...
    def download_failed(self, scheme: str) -> None: ...
    def cache_hit(self, scheme: str) -> None: ...


class _Quiet:
    def downloaded(self, scheme: str, size: int) -> None:
        pass

    def download_finished(self, scheme: str, seconds: float) -> None:
        pass

    def download_failed(self, scheme: str) -> None:
        pass

    def cache_hit(self, scheme: str) -> None:
        pass


_observer: DownloadObserver = _Quiet()


def set_observer(observer: DownloadObserver) -> None:
    global _observer
    _observer = observer


def observer() -> DownloadObserver:
    return _observer
