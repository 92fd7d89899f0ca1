"""Dynamic request batching, configured like TF Serving's (see docs/batching.md)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

from serving.batching.params import BatchingConfigError, BatchOptions, load_file
from serving.batching.runner import BatchingRunner
from serving.batching.sink import BatchMetrics

__all__ = [
    "BatchMetrics",
    "BatchOptions",
    "BatchingConfigError",
    "BatchingRunner",
    "runner_from_flags",
]


def runner_from_flags(
    parameters_file: str,
    per_model_params: bool,
    executor: Executor,
    metrics: BatchMetrics | None = None,
    inflight: Callable[[], int] | None = None,
) -> BatchingRunner:
    """The runner for --enable_batching; raises BatchingConfigError for a bad file."""
    options = load_file(parameters_file) if parameters_file else BatchOptions()
    return BatchingRunner(
        options, executor, per_model_params=per_model_params, metrics=metrics, inflight=inflight
    )
