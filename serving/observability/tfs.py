"""TF Serving's own metric names, written exactly as TF Serving writes them.

prometheus-client appends `_total` to counters and adds `# HELP` lines, so
`:tensorflow:serving:request_count` could not keep its name through it.
Dashboards and the prometheus-adapter rule in deploy/ select these names
literally, so this module keeps its own tiny store and renders TF Serving's
exposition (util/prometheus_exporter.cc): no HELP, one `# TYPE` line per
metric, `name{labels} value`, histograms as `_bucket{..,le=".."}`/`_sum`/
`_count` with TF's exponential bucket limits formatted like absl's StrCat.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from typing import Literal

import numpy as np


def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    """TF core's Buckets::Exponential: scale*growth^i for i < count (+Inf added on output)."""
    return [scale * growth**i for i in range(count)]


class BucketSeries:
    """A labelled histogram's state: per label set, one count per bucket (the
    last one past every limit) and the sum; fed one value or a whole array.

    TF's buckets hold value < limit, Prometheus's value <= limit
    (`upper_inclusive`). Thread-safe.
    """

    def __init__(self, limits: Sequence[float], upper_inclusive: bool) -> None:
        self.limits = [float(limit) for limit in limits]
        self._array = np.array(self.limits)
        self._side: Literal["left", "right"] = "left" if upper_inclusive else "right"
        self._bisect = bisect.bisect_left if upper_inclusive else bisect.bisect_right
        self._lock = threading.Lock()
        # label values → ([bucket counts], [sum]), in the order they first appeared
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        index = self._bisect(self.limits, value)
        with self._lock:
            counts, total = self._series_for(labels)
            counts[index] += 1
            total[0] += value

    def observe_many(self, labels: tuple[str, ...], values: np.ndarray) -> None:
        """`observe` for each of `values` (folded per-request records). The sum
        is added in order, so it is exactly what one value at a time gives."""
        found = np.bincount(
            np.searchsorted(self._array, values, side=self._side), minlength=len(self.limits) + 1
        )
        with self._lock:
            counts, total = self._series_for(labels)
            for slot in np.flatnonzero(found).tolist():
                counts[slot] += int(found[slot])
            acc = total[0]
            for value in values.tolist():
                acc += value
            total[0] = acc

    def snapshot(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        """(label values, bucket counts, sum) of every series, in first-seen order."""
        with self._lock:
            return [(labels, list(c), s[0]) for labels, (c, s) in self._series.items()]

    def _series_for(self, labels: tuple[str, ...]) -> tuple[list[int], list[float]]:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = ([0] * (len(self.limits) + 1), [0.0])
        return series


def _fmt_limit(limit: float) -> str:
    # absl::StrCat(double) prints six significant digits (%g style).
    return f"{limit:g}"


def _fmt_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, labels: Sequence[str]) -> None:
        self.name = name
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def render(self, out: list[str]) -> None:
        raise NotImplementedError


class TfsCounter(_Metric):
    kind = "counter"

    def __init__(self, name: str, labels: Sequence[str]) -> None:
        super().__init__(name, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + amount

    def render(self, out: list[str]) -> None:
        with self._lock:
            items = sorted(self._values.items())
        if not items:
            return
        out.append(f"# TYPE {self.name} counter")
        for labels, value in items:
            out.append(f"{self.name}{{{_label_text(self.labels, labels)}}} {_fmt_value(value)}")


class TfsHistogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, labels: Sequence[str], limits: Sequence[float]) -> None:
        super().__init__(name, labels)
        self._buckets = BucketSeries(limits, upper_inclusive=False)
        self.limits = self._buckets.limits
        self.observe = self._buckets.observe
        self.observe_many = self._buckets.observe_many

    def render(self, out: list[str]) -> None:
        items = sorted((k, (c, s)) for k, c, s in self._buckets.snapshot())
        if not items:
            return
        out.append(f"# TYPE {self.name} histogram")
        for labels, (counts, total) in items:
            text = _label_text(self.labels, labels)
            prefix = f"{text}," if text else ""
            cumulative = 0
            for limit, count in zip([*self.limits, None], counts, strict=True):
                cumulative += count
                le = "+Inf" if limit is None else _fmt_limit(limit)
                out.append(f'{self.name}_bucket{{{prefix}le="{le}"}} {cumulative}')
            out.append(f"{self.name}_sum{{{text}}} {_fmt_value(total)}")
            out.append(f"{self.name}_count{{{text}}} {cumulative}")


class TfsRegistry:
    """The TF Serving-named metrics; rendered sorted by name, as TF Serving does."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, labels: Sequence[str]) -> TfsCounter:
        metric = TfsCounter(name, labels)
        self._metrics[name] = metric
        return metric

    def histogram(self, name: str, labels: Sequence[str], limits: Sequence[float]) -> TfsHistogram:
        metric = TfsHistogram(name, labels, limits)
        self._metrics[name] = metric
        return metric

    def render(self) -> str:
        out: list[str] = []
        for name in sorted(self._metrics):
            self._metrics[name].render(out)
        return "\n".join(out) + "\n" if out else ""
