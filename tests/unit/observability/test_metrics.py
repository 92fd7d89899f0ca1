"""Per-request durations folded in bulk write exactly what one-at-a-time recording wrote."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from serving.observability import metrics as mm
from serving.observability.tfs import TfsHistogram

# Exactly on bucket bounds, between them, below the first and past the last.
VALUES = [0.0, 0.0001, 0.00010001, 0.0003, 0.001, 0.0025, 0.7, 60.0, 61.0, 1e-9]


def _page(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_bulk_histogram_page_matches_prometheus_clients_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = mm.BulkHistogram("h_seconds", "Help text.", ["a", "b"], mm.LATENCY_BUCKETS, ours)
    reference = Histogram(
        "h_seconds", "Help text.", ["a", "b"], buckets=mm.LATENCY_BUCKETS, registry=theirs
    )
    assert _page(ours) == _page(theirs)  # no series yet: HELP and TYPE only
    for labels, values in ((("x", "1"), VALUES), (("y", ""), VALUES[:3]), (("x", "1"), [2.5])):
        bulk.add(labels, np.array(values))
        for value in values:
            reference.labels(*labels).observe(value)
    assert _page(ours) == _page(theirs)


def test_tfs_histogram_bulk_matches_one_at_a_time() -> None:
    limits = [10.0, 18.0, 32.4, 58.32]
    one, bulk = TfsHistogram("t", ["m"], limits), TfsHistogram("t", ["m"], limits)
    values = [0.0, 10.0, 9.999, 18.0, 20.0, 58.32, 1e9]
    for value in values:
        one.observe(("m1",), value)
    bulk.observe_many(("m1",), np.array(values))
    first: list[str] = []
    second: list[str] = []
    one.render(first)
    bulk.render(second)
    assert first == second
    assert 'le="10"} 2' in "\n".join(first)  # 0 and 9.999: TF's buckets exclude their limit


def test_recorder_folds_every_so_often_and_on_every_scrape() -> None:
    m = mm.Metrics()
    seen: list[int] = []
    recorder = m.recorder(("k",), lambda key: [lambda values: seen.append(len(values))])
    assert m.recorder(("k",), lambda key: []) is recorder  # one per outcome
    for _ in range(mm.FOLD_EVERY + 3):
        recorder.add(0.001)
    assert seen == [mm.FOLD_EVERY] and recorder.pending == [0.001] * 3
    m.page()
    assert seen == [mm.FOLD_EVERY, 3] and recorder.pending == []
    m.page()  # nothing new: no empty fold
    assert seen == [mm.FOLD_EVERY, 3]
