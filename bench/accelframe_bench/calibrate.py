"""``accelframe calibrate``: fit TeaCache's rescale polynomial for any adapter from recorded runs.

TeaCache maps the relative L1 change of the cheap probe between consecutive calls to the relative
L1 change of the model's output with a polynomial fitted per model. This command runs the original
loop (every call computed) of ``--adapter`` on ``--prompts`` prompts, records both changes for every
pair of consecutive calls of a unit, and fits ``numpy.polyfit`` of ``--degree``. The result is JSON
that ``pipe.use("teacache", coefficients=doc["coefficients"])`` takes.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Hashable

import attrs
import numpy as np
import torch

from accelframe import hookimpl
from accelframe.errors import ConfigError
from accelframe.types import StepContext, StepDecision
from accelframe_policies.history import rel_l1, unit_key


@attrs.define(eq=False)
class Recorder:
    """A step policy that always recomputes and records (probe change, output change) pairs."""

    name = "teacache-recorder"
    pairs: list[tuple[float, float]] = attrs.field(factory=list)
    _last: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = attrs.field(factory=dict)

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        return StepDecision.recompute(reason="recording")

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, velocity: torch.Tensor) -> None:
        key = unit_key(ctx)
        phi = ctx.probe
        before = self._last.get(key)
        if before is not None and before[0].shape == phi.shape:
            self.pairs.append((rel_l1(phi, before[0], 0.0), rel_l1(velocity, before[1], 1e-12)))
        self._last[key] = (phi, velocity)


def fit(pairs: list[tuple[float, float]], degree: int) -> list[float]:
    """Least-squares polynomial (highest degree first) of output change against probe change."""
    if len(pairs) <= degree:
        raise ConfigError("calibrate", "--degree", degree,
                          f"at most {len(pairs) - 1}: a degree-d fit needs more than d recorded pairs and the runs "
                          f"recorded {len(pairs)} (more prompts or latent frames record more)")
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return [float(c) for c in np.polyfit(x, y, degree)]


def calibrate(pipe: Any, prompts: list[str], *, num_frames: int, degree: int = 4, seed: int = 0) -> dict[str, Any]:
    """Record the original loop of ``pipe`` on ``prompts`` and fit the polynomial."""
    rec = Recorder()
    pipe.use(rec)
    try:
        for i, p in enumerate(prompts):
            pipe.generate([p], num_frames=num_frames, seed=seed + i, decode=False)
    finally:
        pipe.remove(pipe.stack[-1].name)
    coeffs = fit(rec.pairs, degree)
    x = np.array([p[0] for p in rec.pairs])
    y = np.array([p[1] for p in rec.pairs])
    resid = y - np.polyval(coeffs, x)
    return {"coefficients": coeffs, "degree": degree, "pairs": len(rec.pairs),
            "rmse": float(np.sqrt(np.mean(resid ** 2))), "probe_change_range": [float(x.min()), float(x.max())],
            "output_change_mean": float(y.mean())}


def configure(p: argparse.ArgumentParser) -> None:
    from accelframe.cli import add_latent_frame_options

    p.add_argument("--adapter", required=True, help="registered adapter to calibrate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter keyword argument, repeatable (e.g. size=world, num_inference_steps=50)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt to record, repeatable (default: 4 training prompts of the tiny world)")
    add_latent_frame_options(p, latent_help="latent frames per run (default: 3 units of the adapter)")
    p.add_argument("--degree", type=int, default=4, help="polynomial degree (default: 4, as TeaCache)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    """``hooks``: the CLI's plugin manager. Without one the pipeline builds its own with every
    entry point (not :func:`accelframe_bench.hooks.default_hooks`): ``--adapter`` may name any
    installed adapter, not only this repository's."""
    from accelframe.cli import parse_assignments
    from accelframe.pipeline import Pipeline

    if args.degree < 1:
        raise ConfigError("calibrate", "--degree", args.degree, "an int >= 1")
    from accelframe.outputs import check_output, write_text

    check_output(args.out, owner="calibrate", field="--out", force=args.force)
    pipe = Pipeline(args.adapter, hooks=hooks, adapter_kwargs=parse_assignments(args.set, "--set"), trace=False)
    prompts = args.prompt
    if not prompts:
        from accelframe_adapters.world import clips

        prompts = [s.prompt for s in clips.sample_scenes(4, 3_000 + args.seed, split="train")]
    frames = args.latent_frames if args.latent_frames is not None else 3 * pipe.adapter.unit_frames
    doc = {"adapter": args.adapter, "adapter_kwargs": parse_assignments(args.set, "--set"),
           **calibrate(pipe, prompts, num_frames=frames, degree=args.degree, seed=args.seed)}
    text = json.dumps(doc, indent=1)
    if args.out:
        write_text(args.out, text + "\n")
    print(text)
    return 0


__all__ = ["Recorder", "calibrate", "configure", "fit", "run"]
