"""``Pipeline(decode_worker=True)``: decoding and SDVG's scoring on a thread of their own change the
timing, never the result: frames, latents, sources, counts and the trace's events equal the inline
run's, with step and block policies stacked and with failing scorers."""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections import Counter
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from accelframe.errors import ConfigError, PolicyFallbackWarning
from accelframe.pipeline import Pipeline
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import mean_brightness
from accelframe_policies import plugin as policies_plugin

PROMPT = "a red circle moves left on a blue background"


def _pipe(kw: dict[str, Any], dkw: dict[str, Any] | None, worker: bool, stack: list,
          context: str = "own") -> Pipeline:
    p = Pipeline("analytic", adapter_kwargs=kw, hooks=make_hooks(policies_plugin), decode_worker=worker,
                 drafter="analytic" if dkw is not None else None, drafter_kwargs=dkw, drafter_context=context)
    for name, args in stack:
        p.use(name, **args)
    return p


def _run(p: Pipeline, n: int, seed: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyFallbackWarning)
        return p.generate([PROMPT], num_frames=n, seed=seed)


def _events(res: Any) -> Counter:
    """The trace's events as a multiset (a worker run records a verdict after the next draft's steps)."""
    return Counter(repr(sorted(e.items())) for e in res.trace.events)


def assert_same(a: Any, b: Any) -> None:
    assert torch.equal(a.latents, b.latents)
    assert torch.equal(a.frames, b.frames)
    assert a.sources == b.sources
    sa, sb = a.stats.to_dict(), b.stats.to_dict()
    assert sa["calls"] == sb["calls"] and sa["blocks"] == sb["blocks"] and sa["fallbacks"] == sb["fallbacks"]
    assert (sa["units"], sa["frames"]) == (sb["units"], sb["frames"])
    assert _events(a) == _events(b)


def _brightness_or_fail(every: int):
    calls = {"n": 0}

    def scorer(frames: torch.Tensor, prompts: Any) -> torch.Tensor:
        calls["n"] += 1
        if every and calls["n"] % every == 0:
            raise RuntimeError("scorer down")
        return mean_brightness(frames, prompts)
    return scorer


@settings(max_examples=20, deadline=None)
@given(unit=st.integers(1, 3), units=st.integers(1, 5), steps=st.integers(1, 4), dsteps=st.integers(1, 3),
       tau=st.sampled_from([-math.inf, 0.0, 0.45, 0.5, math.inf]), scope=st.booleans(),
       fail=st.sampled_from([0, 2]), seed=st.integers(0, 3))
def test_a_drafted_run_with_a_worker_equals_the_inline_run(unit, units, steps, dsteps, tau, scope, fail, seed):
    kw = {"plan": "block", "unit_frames": unit, "steps": steps, "channels": 2, "height": 4, "width": 4}
    dkw = {**kw, "steps": dsteps, "coupling": 0.3}
    stack = ([("scope", {"tau_c": 0.5, "tau_p": 2.0, "max_skip": 2, "applies_to": "both"})] if scope else [])
    out = []
    for worker in (False, True):
        p = _pipe(kw, dkw, worker, [*stack, ("sdvg", {"tau": tau, "scorer": _brightness_or_fail(fail)})])
        out.append(_run(p, unit * units, seed))
    assert_same(*out)


@settings(max_examples=10, deadline=None)
@given(unit=st.integers(1, 3), units=st.integers(2, 5), steps=st.integers(1, 4),
       tau=st.sampled_from([0.0, 0.45, 0.5, math.inf]), seed=st.integers(0, 3))
def test_an_emitted_context_run_with_a_worker_equals_the_inline_run(unit, units, steps, tau, seed):
    """The emitted context drafts after each verdict, so it runs without the overlap, but a regenerated
    unit's decode still goes to the worker: the next draft's decode reads the decoder's state after
    it, as inline. A slow decode keeps that unit on the worker while the next draft is judged."""
    kw = {"plan": "block", "unit_frames": unit, "steps": steps, "channels": 2, "height": 4, "width": 4}
    out = []
    for worker in (False, True):
        p = _pipe(kw, {**kw, "steps": 1, "coupling": 0.3}, worker,
                  [("sdvg", {"tau": tau, "scorer": mean_brightness})], context="emitted")
        decode = p.adapter.decode

        def slow(latents, state, decode=decode):
            time.sleep(0.002)
            return decode(latents, state)

        p.adapter.decode = slow
        out.append(_run(p, unit * units, seed))
    assert_same(*out)


@settings(max_examples=10, deadline=None)
@given(unit=st.integers(1, 3), units=st.integers(1, 5), steps=st.integers(1, 4), seed=st.integers(0, 3))
def test_a_target_only_run_with_a_worker_equals_the_inline_run(unit, units, steps, seed):
    kw = {"plan": "block", "unit_frames": unit, "steps": steps, "channels": 2, "height": 4, "width": 4}
    stack = [("scope", {"tau_c": 0.5, "tau_p": 2.0, "max_skip": 2})]
    a, b = (_run(_pipe(kw, None, worker, stack), unit * units, seed) for worker in (False, True))
    assert_same(a, b)
    assert b.stats.time_s["decode_wait"] >= 0 and a.stats.time_s["decode_wait"] == 0


def test_decoding_and_scoring_run_on_the_worker_thread_and_units_arrive_in_order():
    seen: dict[str, set] = {"decode": set(), "score": set()}
    kw = {"plan": "block", "unit_frames": 2, "steps": 2, "channels": 2, "height": 4, "width": 4}

    def scorer(frames, prompts):
        seen["score"].add(threading.current_thread().name)
        return mean_brightness(frames, prompts)

    p = _pipe(kw, {**kw, "steps": 1}, True, [("sdvg", {"tau": 0.5, "scorer": scorer})])
    decode = p.adapter.decode

    def spy(latents, state):
        seen["decode"].add(threading.current_thread().name)
        return decode(latents, state)

    p.adapter.decode = spy
    spans = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyFallbackWarning)
        p.generate([PROMPT], num_frames=10, seed=0, on_unit=lambda span, pixels, source: spans.append(span.unit))
    assert spans == [0, 1, 2, 3, 4]
    assert all(name.startswith("accelframe-decode") for names in seen.values() for name in names)
    assert seen["decode"] and seen["score"]


def test_a_failing_decode_is_raised_on_the_calling_thread():
    kw = {"plan": "block", "unit_frames": 2, "steps": 2, "channels": 2, "height": 4, "width": 4}
    p = _pipe(kw, None, True, [])

    def broken(latents, state):
        raise RuntimeError("decoder down")

    p.adapter.decode = broken
    with pytest.raises(RuntimeError, match="decoder down"):
        p.generate([PROMPT], num_frames=4, seed=0)


def test_decode_worker_must_be_a_bool():
    with pytest.raises(ConfigError, match="decode_worker"):
        Pipeline("analytic", hooks=make_hooks(policies_plugin), decode_worker="yes")
