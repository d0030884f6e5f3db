"""How well do SCOPE's predictors extrapolate an adapter's real velocity trajectory? (a diagnostic)

Runs the original loop (every call computed) on training prompts of the tiny world, keeps every
call's velocity, then for each call k predicts it from the computed velocities at calls
``k - ahead``, ``k - ahead - gap``, ``k - ahead - 2 gap`` (how SCOPE's history is spaced when it
recomputes every ``gap`` calls) with order 0 (reuse), 1 (Eq. 6) and 2 (Eq. 7), each unclipped and
with SCOPE's per-frame clipping. Prints the mean relative L1 error over advancing frames::

    python scripts/predictor_error.py [--adapter skyreels-v2-df] [--prompts 2] [--clip 0.05 0.25 1.0] [--json]

The default ``clip`` of SCOPE was chosen with this script (docs/policies.md).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from accelframe import hookimpl
from accelframe_adapters.world import clips
from accelframe_bench.hooks import default_hooks
from accelframe_bench.step import _pipe, setup
from accelframe_policies.history import entry
from accelframe_policies.taylor import extrapolate


class Recorder:
    """Keeps every call's velocity as a history entry, with the call's update mask."""

    name = "velocity-recorder"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def accelframe_step_observe(self, ctx, decision, velocity) -> None:
        self.calls.append((entry(velocity.clone(), ctx.sigma, ctx.frames, None, ctx.step),
                           torch.tensor(ctx.iteration.update), ctx.unit))


def errors(calls: list[tuple], gap: int, ahead: int, order: int, clip: float) -> list[float]:
    out = []
    for k in range(2 * gap + ahead, len(calls)):
        base = k - ahead
        hist = [calls[base][0], calls[base - gap][0], calls[base - 2 * gap][0]]
        truth, mask = calls[k][0].velocity, calls[k][1].view(1, -1, 1, 1, 1).float()
        same_unit = len({calls[j][2] for j in (k, base, base - gap, base - 2 * gap)}) == 1
        if not same_unit or hist[0].velocity.shape != truth.shape or not mask.any():
            continue
        v, _ = extrapolate(hist, calls[k][0].sigma, order=order, clip=clip)
        out.append(float(((v - truth).abs() * mask).sum() / (truth.abs() * mask).sum().clamp_min(1e-12)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", default="skyreels-v2-df", choices=("skyreels-v2-df", "self-forcing"))
    ap.add_argument("--prompts", type=int, default=2, help="training prompts (default: 2)")
    ap.add_argument("--gaps", type=int, nargs="+", default=[6], help="calls between recomputes (default: 6)")
    ap.add_argument("--ahead", type=int, nargs="+", default=[1, 3, 5], help="calls past the newest (default: 1 3 5)")
    ap.add_argument("--clip", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.25, 1.0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    s = setup(args.adapter)
    rows = []
    runs = []
    for i, scene in enumerate(clips.sample_scenes(args.prompts, 3_000, split="train")):
        pipe = _pipe(default_hooks(), args.adapter, s.adapter_kwargs, None)
        rec = Recorder()
        pipe.use(rec)
        pipe.generate([scene.prompt], num_frames=s.frames, seed=5 + i, decode=False)
        runs.append(rec.calls)
    for gap in args.gaps:
        for ahead in args.ahead:
            row = {"gap": gap, "ahead": ahead,
                   "reuse": statistics.fmean(e for c in runs for e in errors(c, gap, ahead, 0, 1.0))}
            for clip in args.clip:
                for order in (1, 2):
                    row[f"order{order}_clip{clip:g}"] = statistics.fmean(
                        e for c in runs for e in errors(c, gap, ahead, order, clip))
            rows.append(row)
    if args.json:
        print(json.dumps({"adapter": args.adapter, "prompts": args.prompts, "rows": rows}, indent=1))
        return 0
    for row in rows:
        print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
