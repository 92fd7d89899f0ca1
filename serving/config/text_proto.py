"""Reading a configuration file written as a protobuf text proto."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from serving.errors import TextProtoError

__all__ = ["TextProtoError", "read_text_proto"]

M = TypeVar("M", bound=Message)


def read_text_proto(path: str, message: M) -> M:
    """Parse `path` into `message`; errors name the file, the message type and the problem."""
    try:
        with open(path) as f:
            text_format.Parse(f.read(), message)
    except (OSError, text_format.ParseError) as exc:
        what = message.DESCRIPTOR.name
        raise TextProtoError(f"{path}: not a valid {what} text proto: {exc}") from None
    return message
