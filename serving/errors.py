"""Every error type the server raises, in the lowest layer.

Any layer can raise or catch any of them without importing a layer above it.

- `ServingError`: a client-visible failure with a gRPC status code; the gRPC
  adapter passes the code through and the REST adapter maps it to HTTP, so
  both protocols report the same mistake the same way (as TF Serving does).
- `LoadError`: a model version could not be loaded; it goes into its status.
- `ConfigError` and its kinds: a file or flag combination is unusable.
- `StartupError`: the server cannot start; the CLI prints it and exits 1.
"""

from __future__ import annotations

import grpc

# TF Serving's mapping from canonical status codes to HTTP status codes
# (http_rest_api_handler's ToHTTPStatusCode).
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A failure with a canonical status code and a message meant for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    @property
    def code_name(self) -> str:
        return self.code.name

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


class GraphError(ServingError):
    """TensorFlow itself failed while running a signature (not our own checks)."""


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def resource_exhausted(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def http_status_for(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


class LoadError(Exception):
    """A version could not be loaded; the message and code go into its status."""

    def __init__(self, message: str, code: int = 2) -> None:  # 2 = UNKNOWN
        super().__init__(message)
        self.code = code


class ConfigError(ValueError):
    """A configuration file could not be read, parsed or validated."""


class TextProtoError(ConfigError):
    """The file cannot be read or is not a valid text proto of the expected message."""


class BatchingConfigError(ConfigError):
    """A batching parameters file is unreadable or inconsistent."""


class DeviceConfigError(ConfigError):
    """The device config file is unreadable or invalid."""


class StartupError(RuntimeError):
    """The server cannot start with these flags or files."""
