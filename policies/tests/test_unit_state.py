"""Step policies keep per-unit state for the most recent units only (``history.RecentUnits``): a
live stream runs for hours, and the state of its finished units must not pile up."""

from __future__ import annotations

import pytest

from accelframe.pipeline import Pipeline
from accelframe.testing.fixtures import make_hooks
from accelframe_policies import plugin as policies_plugin
from accelframe_policies.history import UNIT_KEYS, History, RecentUnits


def test_recent_units_keep_the_most_recently_used():
    d = RecentUnits(limit=3)
    for k in range(3):
        d[k] = k
    assert d.get(0) == 0  # used: 1 is now the oldest
    d[3] = 3
    assert list(d) == [2, 0, 3] and 1 not in d and len(d) == 3
    assert d.setdefault(4, "x") == "x" and 2 not in d and d.pop(0) == 0
    h = History(size=2)
    assert isinstance(h._by_key, RecentUnits)


@pytest.mark.parametrize("name,fields", [("scope", ("_units", "_hist")), ("teacache", ("_units", "_hist")),
                                         ("taylorseer", ("_units",)), ("first-block-cache", ("_phi", "_hist")),
                                         ("flowcache", ("_chunks",))])
def test_a_long_generation_keeps_state_for_recent_units_only(name, fields):
    pipe = Pipeline("analytic", hooks=make_hooks(policies_plugin),
                    adapter_kwargs={"plan": "block", "unit_frames": 1, "steps": 4, "height": 4, "width": 4})
    pipe.use(name)
    pipe.generate(["a red circle"], num_frames=UNIT_KEYS + 60, seed=0)
    policy = pipe.stack[0].policy
    for field in fields:
        state = getattr(policy, field)
        held = state._by_key if isinstance(state, History) else state
        assert 0 < len(held) <= UNIT_KEYS, (field, len(held))
