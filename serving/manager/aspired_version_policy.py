"""The availability-preserving policy: which loads and unloads to start next.

A pure function of a model's version states, in the spirit of TF Serving's
AspiredVersionPolicy with its availability-preserving choice, so the rules can
be read and tested apart from the threads and the lock that carry them out:

- every aspired version not yet tried, or due a retry, is loaded (the
  manager's load pool bounds how many run at once);
- a version no longer aspired that never became AVAILABLE is dropped;
- an AVAILABLE version no longer aspired is unloaded once some aspired version
  is AVAILABLE, or when nothing is aspired at all; until then the newest of
  them keeps serving, so a swap never leaves a gap.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from serving.manager.state import State


class Action(enum.Enum):
    LOAD = "load"
    UNLOAD = "unload"
    DROP = "drop"  # not loaded and no longer aspired: straight to END


@dataclass(frozen=True)
class VersionSnapshot:
    version: int
    state: State
    aspired: bool
    busy: bool = False  # a load or unload job is running for it
    retry_at: float | None = None  # monotonic time of its next load attempt


@dataclass(frozen=True)
class Decision:
    actions: tuple[tuple[Action, int], ...]
    retry_in: float | None  # seconds until the earliest retry not yet due


def next_actions(versions: Sequence[VersionSnapshot], now: float) -> Decision:
    """What to start now for one model, given all its versions."""
    actions: list[tuple[Action, int]] = []
    retry_in: float | None = None
    for v in versions:
        if not v.aspired or v.busy:
            continue
        if v.state == State.START:
            actions.append((Action.LOAD, v.version))
        elif v.state == State.LOADING and v.retry_at is not None:
            if v.retry_at <= now:
                actions.append((Action.LOAD, v.version))
            else:
                wait = v.retry_at - now
                retry_in = wait if retry_in is None else min(retry_in, wait)
    aspired = [v for v in versions if v.aspired]
    serving_aspired = any(v.state == State.AVAILABLE for v in aspired)
    for v in versions:
        if v.aspired or v.busy:
            continue
        if v.state in (State.START, State.LOADING):
            actions.append((Action.DROP, v.version))
        elif v.state == State.AVAILABLE and (not aspired or serving_aspired):
            actions.append((Action.UNLOAD, v.version))
    if aspired and not serving_aspired:
        # Keep one version no longer aspired, the newest, serving until an
        # aspired one is AVAILABLE.
        stale = sorted(
            (v for v in versions if not v.aspired and v.state == State.AVAILABLE),
            key=lambda v: v.version,
        )
        actions.extend((Action.UNLOAD, v.version) for v in stale[:-1] if not v.busy)
    return Decision(tuple(actions), retry_in)
