"""Can SDVG's scorer tell the drafter's blocks from the target's? (a diagnostic)

Generates held-out prompts of the tiny world with the target alone and the drafter alone (the
``self-forcing`` adapter, 9 blocks of 3 latent frames, same seeds), scores every decoded frame with
the scorer SDVG routes by, aggregates each block after block 0 as SDVG does (worst frame by
default), and reports how often the target's block outscores the drafter's block at the same
position of the same prompt, the AUC over all pairs of blocks, and the median block scores::

    python scripts/router_signal.py [--prompts 10] [--aggregation min|mean] [--json]

docs/sdvg.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

import torch

from accelframe_adapters.wan.vae import pixel_frames
from accelframe_adapters.world import clips
from accelframe_bench.block import LATENT_FRAMES, Method, Models
from accelframe_policies.sdvg import aggregate


def block_scores(scores: torch.Tensor, aggregation: str) -> list[float]:
    """Per-frame scores ``[T]`` of a 9-block clip -> the block scores of blocks 1..8."""
    first = pixel_frames(3)  # block 0's pixel frames; every later block has 4 per latent frame
    per = pixel_frames(6) - first
    blocks = scores[first:].view(-1, per)  # [8, 12]
    return aggregate(blocks, aggregation).tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=10, help="held-out prompts (default: 10)")
    ap.add_argument("--aggregation", default="min", choices=("min", "mean"), help="block score (default: min)")
    ap.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    models = Models.load()
    target, drafter = models.pipeline(None), models.pipeline(Method(name="draft-only", kind="draft_only"))
    rng = random.Random(args.seed)
    scenes = clips.sample_scenes(args.prompts, 7_000 + args.seed, split="eval")
    t_all, d_all, wins = [], [], 0
    for scene in scenes:
        seed = rng.randrange(2**31)
        t = target.generate([scene.prompt], num_frames=LATENT_FRAMES, seed=seed).frames  # [1, T, 3, H, W]
        d = drafter.generate([scene.prompt], num_frames=LATENT_FRAMES, seed=seed).frames
        tb = block_scores(models.scorer(t, [scene.prompt])[0], args.aggregation)
        db = block_scores(models.scorer(d, [scene.prompt])[0], args.aggregation)
        wins += sum(a > b for a, b in zip(tb, db))
        t_all += tb
        d_all += db
    auc = sum((a > b) + 0.5 * (a == b) for a in t_all for b in d_all) / (len(t_all) * len(d_all))
    doc = {"prompts": args.prompts, "aggregation": args.aggregation, "pairs": len(t_all),
           "target_above_drafter_same_block": wins / len(t_all), "auc": auc,
           "median_target_block": statistics.median(t_all), "median_drafter_block": statistics.median(d_all)}
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        for k, val in doc.items():
            print(f"{k}: {val:.3f}" if isinstance(val, float) else f"{k}: {val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
