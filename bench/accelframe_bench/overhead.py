"""``accelframe bench overhead``: the engine's own cost per model call.

The same plan of the analytic adapter runs two ways in one process, interleaved: through a
pipeline (hook dispatch, contexts, decision checks, statistics, trace) and as a bare loop that
calls the adapter directly (initial noise, denoise, advance, commit). Both produce the same bits,
which the benchmark checks. The difference per model call is the overhead; its fraction is taken
against a 1 ms model call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch

from accelframe.errors import ConfigError
from accelframe.plugins import create_hooks, hookimpl
from accelframe.rng import unit_generator
from accelframe.types import Request, Role, StepContext

REFERENCE_CALL_S = 1e-3  # the model call the fraction is taken against


class PassThroughStep:
    """A step policy with no opinion: the decide and observe hooks are dispatched, nothing else."""

    name = "pass-through"

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> None:
        return None

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext) -> None:
        return None


def direct_run(adapter: Any, request: Request) -> tuple[torch.Tensor, int]:
    """Walk the plan calling the adapter directly; returns the latents and the model calls."""
    state = adapter.init_state(request, adapter.encode_prompt(request.prompts))
    c, h, w = adapter.latent_shape
    x = torch.zeros(request.batch, request.num_frames, c, h, w)  # [B, F, C, H, W]
    gens: dict[int, torch.Generator] = {}
    calls = 0
    for it in adapter.plan(request):
        for span in it.starts:
            g = gens[span.unit] = unit_generator(request.seed, span.unit)
            x[:, span.start:span.end] = torch.randn(
                (request.batch, span.end - span.start, c, h, w), generator=g).to(x.dtype)
        s, e = it.frames
        xs = x[:, s:e]
        calls += 1
        if it.role is Role.COMMIT:
            adapter.commit(xs, it.frames, state)
            continue
        v = adapter.denoise(xs, it, it.frames, state, it.kv_write)
        x[:, s:e] = adapter.advance(xs, v, it, gens[it.unit], state)
    return x, calls


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def overhead(
    *,
    units: int = 20,
    steps: int = 4,
    repeats: int = 150,
    trace: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Measure the per-call engine overhead; returns the JSON document ``bench overhead`` prints."""
    from accelframe.pipeline import Pipeline
    from accelframe.testing.analytic import AnalyticAdapter

    # a small field keeps the adapter's own time (and its noise) small next to the overhead
    kw = {"plan": "block", "unit_frames": 3, "steps": steps, "channels": 2, "height": 4,
          "width": 4}
    adapter = AnalyticAdapter(**kw)
    # each pipeline gets its own plugin manager (no entry points: nothing but the engine runs)
    bare = Pipeline(adapter, hooks=create_hooks(autoload=False), trace=trace)
    stacked = Pipeline(AnalyticAdapter(**kw), hooks=create_hooks(autoload=False), trace=trace)
    stacked.use(PassThroughStep())
    req = Request(prompts=("a red circle moves left on a blue background",),
                  num_frames=3 * units, seed=0, decode=False)

    ref, calls = direct_run(adapter, req)
    for pipe in (bare, stacked):  # same bits: the engine adds bookkeeping, not arithmetic
        out = pipe.generate(req).latents
        if not torch.equal(out, ref):
            raise AssertionError("engine and direct loop disagree; the overhead would be meaningless")

    samples: dict[str, list[float]] = {"direct": [], "engine": [], "engine_policy": []}
    for r in range(repeats):  # interleaved: drift on a shared machine hits all three alike
        samples["direct"].append(_timed(lambda: direct_run(adapter, req)))
        samples["engine"].append(_timed(lambda: bare.generate(req)))
        samples["engine_policy"].append(_timed(lambda: stacked.generate(req)))
        if progress is not None:
            progress(r)
    bare.close()
    stacked.close()

    def per_call_us(key: str) -> float:
        # fastest run against fastest run: the minimum of a deterministic workload is the
        # estimate least disturbed by whatever else the machine does
        return (min(samples[key]) - min(samples["direct"])) / calls * 1e6

    def paired_median_us(key: str) -> float:
        diffs = [a - d for a, d in zip(samples[key], samples["direct"])]
        return statistics.median(diffs) / calls * 1e6

    us_policy = per_call_us("engine_policy")
    us_bare = per_call_us("engine")
    direct_call_us = min(samples["direct"]) / calls * 1e6
    return {
        "overhead_us_per_call": us_policy,
        "overhead_fraction": us_policy * 1e-6 / REFERENCE_CALL_S,
        "overhead_us_per_call_no_policy": us_bare,
        "overhead_fraction_no_policy": us_bare * 1e-6 / REFERENCE_CALL_S,
        "overhead_us_per_call_paired_median": paired_median_us("engine_policy"),
        "direct_us_per_call": direct_call_us,
        "model_calls_per_run": calls,
        "repeats": repeats,
        "trace": trace,
        "reference_call_ms": REFERENCE_CALL_S * 1e3,
        "config": {"units": units, "steps": steps, **kw},
        "goal": {"overhead_us_per_call": 20.0, "overhead_fraction": 0.02},
    }


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=20, help="units per run (default: 20)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per unit (default: 4)")
    p.add_argument("--repeats", type=int, default=150,
                   help="interleaved repeats; more give a steadier minimum (default: 150)")
    p.add_argument("--no-trace", action="store_true", help="measure with the trace off")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    """``hooks`` (the CLI's manager) is not used: the engine's own cost is measured on managers
    with no plugins, since a loaded plugin's model-call wrapper would be counted as overhead."""
    from accelframe.progress import progress_bar

    for field, val in (("--units", args.units), ("--steps", args.steps), ("--repeats", args.repeats)):
        if val < 1:
            raise ConfigError("accelframe bench overhead", field, val, "an int >= 1")
    with progress_bar(total=args.repeats, desc="bench overhead", unit="run", quiet=args.json) as bar:
        doc = overhead(units=args.units, steps=args.steps, repeats=args.repeats,
                       trace=not args.no_trace, progress=lambda r: bar.update(1))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"engine overhead: {doc['overhead_us_per_call']:.2f} us per model call with a "
              f"pass-through step policy ({doc['overhead_fraction'] * 100:.2f}% of a 1 ms call); "
              f"{doc['overhead_us_per_call_no_policy']:.2f} us with no policy; direct call "
              f"{doc['direct_us_per_call']:.1f} us")
    return 0
