"""The availability-preserving policy as a pure function (no threads, no TensorFlow)."""

from __future__ import annotations

from serving.manager.aspired_version_policy import Action, VersionSnapshot, next_actions
from serving.manager.state import State

AVAILABLE, START, LOADING, END = State.AVAILABLE, State.START, State.LOADING, State.END


def v(version: int, state: State, aspired: bool = True, **kw) -> VersionSnapshot:
    return VersionSnapshot(version, state, aspired, **kw)


def actions(*versions: VersionSnapshot, now: float = 100.0) -> list[tuple[Action, int]]:
    return list(next_actions(list(versions), now).actions)


def test_new_aspired_versions_load() -> None:
    assert actions(v(1, START), v(2, START)) == [(Action.LOAD, 1), (Action.LOAD, 2)]
    assert actions(v(1, START, busy=True)) == []


def test_old_version_serves_until_new_one_is_available() -> None:
    assert actions(v(1, AVAILABLE, aspired=False), v(2, LOADING, busy=True)) == []
    assert actions(v(1, AVAILABLE, aspired=False), v(2, AVAILABLE)) == [(Action.UNLOAD, 1)]


def test_nothing_aspired_unloads_everything() -> None:
    assert actions(v(1, AVAILABLE, aspired=False), v(2, AVAILABLE, aspired=False)) == [
        (Action.UNLOAD, 1),
        (Action.UNLOAD, 2),
    ]


def test_only_the_newest_stale_version_keeps_serving() -> None:
    got = actions(
        v(1, AVAILABLE, aspired=False),
        v(2, AVAILABLE, aspired=False),
        v(3, LOADING, busy=True),
    )
    assert got == [(Action.UNLOAD, 1)]


def test_unaspired_versions_never_loaded_are_dropped() -> None:
    assert actions(v(1, START, aspired=False), v(2, LOADING, aspired=False)) == [
        (Action.DROP, 1),
        (Action.DROP, 2),
    ]


def test_retries_wait_for_their_time() -> None:
    decision = next_actions([v(1, LOADING, retry_at=103.0), v(2, LOADING, retry_at=101.5)], 100.0)
    assert decision.actions == () and decision.retry_in == 1.5
    assert actions(v(1, LOADING, retry_at=99.0)) == [(Action.LOAD, 1)]
    assert next_actions([v(1, END)], 100.0).retry_in is None
