"""The one error type of the storage layer."""

from __future__ import annotations


class StorageError(Exception):
    """A base path or version could not be listed or fetched; the message says why.

    `transient` is False for mistakes that retrying cannot fix (an unknown
    scheme, a malformed URL).
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
