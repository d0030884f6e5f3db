"""Review tests of the step executor and the stream batch on it (defects found in review).

- ``max_reuse`` bounds *consecutive* non-recompute calls: a recompute the executor falls back to
  (a policy that failed or answered a reuse at a unit's first step) ends the run like any other, so
  the guard never fires right after a recompute.
- A block policy's ``accelframe_block_observe`` fires after the unit was emitted (hookspecs), also
  in the stream batch when the draft was rejected and the target regenerates the chunk.
"""

from __future__ import annotations

import attrs
import pytest
import torch

from accelframe import hookimpl
from accelframe.pipeline import Pipeline
from accelframe.streaming import StreamLoop, StreamSource, VirtualClock
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import ThresholdBlock
from accelframe.trace import Trace
from accelframe.types import BlockContext, BlockVerdict, StepContext, StepDecision
from accelframe_policies import plugin as policies_plugin

from tests.test_step_executor import TINY, RowAnalytic


class EagerCache:
    """Answers CACHE (a zero velocity) at every call, also where a reuse is refused (a unit's first
    step): the executor falls back to a recompute there."""

    name = "eager-cache"

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        return StepDecision.cache(torch.zeros_like(ctx.x))


def _runs_before_guards(trace: Trace, model: str = "target") -> list[int]:
    """For every ``max_reuse`` guard, how many non-recompute calls of ``model`` came right before it."""
    out, run = [], 0
    for e in trace.raw:
        if type(e) is tuple:
            if e[0] == model:
                run = 0 if e[5] == "recompute" else run + 1
        elif e.get("event") == "guard" and e.get("model") == model:
            out.append(run)
    return out


@pytest.mark.filterwarnings("ignore::accelframe.errors.PolicyFallbackWarning")  # the fallback is the point
def test_a_fallback_recompute_ends_the_reuse_run_that_max_reuse_bounds():
    """Units of four steps, a policy that always answers CACHE, ``max_reuse=1``: per unit the first
    step falls back to a recompute, the second is cached, the third is forced (the guard), the fourth
    is cached. The guard fires only after a cached call, never right after a recompute."""
    pipe = Pipeline(AnalyticAdapter(steps=4, **TINY), hooks=make_hooks(), max_reuse=1)
    pipe.use(EagerCache())
    res = pipe.generate(["a red circle"], num_frames=12, seed=0)
    modes = [e[5] for e in res.trace.raw if type(e) is tuple and e[0] == "target"]
    assert len(modes) >= 8  # at least two units
    runs = _runs_before_guards(res.trace)
    assert runs and all(r >= 1 for r in runs), runs
    assert modes[:8] == ["recompute", "cache", "recompute", "cache"] * 2


@attrs.define(eq=False)
class ObserveAfterEmit:
    """Records, at every ``accelframe_block_observe``, whether the unit was already emitted (an
    ``emit`` event of its frames in the run's trace)."""

    trace: Trace | None = None
    seen: list[tuple[int, str, bool]] = attrs.field(factory=list)

    @hookimpl
    def accelframe_block_observe(self, ctx: BlockContext, verdict: BlockVerdict) -> None:
        assert self.trace is not None
        emitted = any(isinstance(e, dict) and e["event"] == "emit" and e["frames"] == list(ctx.frames)
                      for e in self.trace.raw)
        self.seen.append((ctx.unit, verdict.verdict.value, emitted))


def test_the_stream_batch_observes_a_block_verdict_after_the_unit_was_emitted():
    """Every draft rejected (block 0 always, the others by tau = +inf): the target regenerates each
    chunk in later micro-steps, and the block policies observe the verdict once it is out."""
    obs = ObserveAfterEmit()
    pipe = Pipeline(RowAnalytic(steps=3, **TINY), drafter=RowAnalytic(steps=2, **TINY),
                    hooks=make_hooks(policies_plugin))
    pipe.use("fixed-batch", max_streams=1)
    pipe.use(ThresholdBlock(tau=float("inf")))
    pipe.use(obs)
    src = [StreamSource(id="s0", prompt="a red circle", num_frames=12, fps=50.0, seed=0)]
    loop = StreamLoop(pipe, src, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True)
    obs.trace = loop.trace
    run = loop.run()
    assert {e["source"] for e in run.trace.of("emit")} == {"target"}
    assert len(obs.seen) == len(run.trace.of("block")) >= 2
    assert all(v == "regenerate" and emitted for _, v, emitted in obs.seen), obs.seen
