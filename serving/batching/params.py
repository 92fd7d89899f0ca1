"""TF Serving's BatchingParameters text proto → validated batching options.

Defaults are TF Serving's own (SharedBatchScheduler::QueueOptions and
Options): max_batch_size 1000, batch_timeout_micros 0, max_enqueued_batches
10, num_batch_threads = CPU count. With a zero timeout a batch closes as soon
as a batch thread is free, so batches grow exactly when the model is busy:
no added latency at low load, full batches under load.
"""

from __future__ import annotations

import itertools
import os

from google.protobuf import text_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.errors import BatchingConfigError

PER_MODEL_FILE = "batching_params.pbtxt"


class BatchOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Largest request (in rows) a queue accepts; also the largest batch
    # unless large-batch splitting sets max_execution_batch_size.
    max_batch_size: int = Field(1000, ge=1)
    batch_timeout_micros: int = Field(0, ge=0)
    max_enqueued_batches: int = Field(10, ge=1)
    # Shared by every model (TF Serving's shared batch scheduler): only the
    # server-wide value counts, as with --enable_per_model_batching_parameters.
    num_batch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = Field(None, ge=1)

    @property
    def execution_batch_size(self) -> int:
        """The largest batch handed to the model."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    @model_validator(mode="after")
    def _allowed_sizes(self) -> BatchOptions:
        sizes = self.allowed_batch_sizes
        if not sizes:
            return self
        if any(s <= 0 for s in sizes):
            raise ValueError("allowed_batch_sizes entries must be positive")
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
        expected = self.execution_batch_size
        if sizes[-1] != expected:
            what = (
                "max_execution_batch_size"
                if self.execution_batch_size != self.max_batch_size
                else "max_batch_size"
            )
            raise ValueError(
                f"Last entry in allowed_batch_sizes must match {what}; last entry was "
                f"{sizes[-1]}; expected {expected}"
            )
        return self

    def padded_size(self, rows: int) -> int:
        """The smallest allowed batch size holding `rows` (rows itself if none)."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def from_proto(params: Message, base: BatchOptions | None = None) -> BatchOptions:
    """Options from a BatchingParameters message; unset fields keep `base`'s values."""
    values = dict(base.model_dump()) if base is not None else {}
    for name in (
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
        "thread_pool_name",
        "enable_large_batch_splitting",
        "max_execution_batch_size",
    ):
        if params.HasField(name):
            values[name] = getattr(params, name).value
    if params.allowed_batch_sizes:
        values["allowed_batch_sizes"] = tuple(params.allowed_batch_sizes)
    if params.pad_variable_length_inputs:
        values["pad_variable_length_inputs"] = True
    try:
        return BatchOptions(**values)
    except ValueError as exc:
        raise BatchingConfigError(_first_error(exc)) from None


def parse_text(text: str, base: BatchOptions | None = None) -> BatchOptions:
    from serving.protos import BatchingParameters

    params = BatchingParameters()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as exc:
        raise BatchingConfigError(f"not a valid BatchingParameters text proto: {exc}") from None
    return from_proto(params, base)


def load_file(path: str, base: BatchOptions | None = None) -> BatchOptions:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise BatchingConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        return parse_text(text, base)
    except BatchingConfigError as exc:
        raise BatchingConfigError(f"{path}: {exc}") from None


def per_model(version_path: str, server_wide: BatchOptions) -> BatchOptions:
    """`batching_params.pbtxt` in a version folder, as TF Serving reads it.

    The file replaces the server-wide queue settings (unset fields take the
    defaults); the batch thread pool stays the server-wide one.
    """
    path = os.path.join(version_path, PER_MODEL_FILE)
    if not os.path.isfile(path):
        return server_wide
    options = load_file(path)
    return options.model_copy(
        update={
            "num_batch_threads": server_wide.num_batch_threads,
            "thread_pool_name": server_wide.thread_pool_name,
        }
    )


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc)
