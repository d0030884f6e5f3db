"""Cost tables measured on a GPU (issue 23 items 6 and 7): what ``scripts/gpu_suite.py``'s ``costs``
section measured, kept so that every machine prices with them.

Measured on one NVIDIA H200 (PyTorch 2.11.0+cu130) on 2026-12-04, random weights: the DiTs and the
Wan VAE in bfloat16, each figure the best of 2 or 3 timed runs after a warm-up, batch 1. The calls are
those the FLOPs tables of :mod:`accelframe_bench.costs` assume, composed as their assumptions say:

- a Self-Forcing call: the 1.3B DiT over a block of 3 latent frames at 480 x 832 attending to 11
  cached frames (the protocol's average); its commit is priced as a call (one pass over the block);
- Krea's target call: the 14B DiT over the block attending to 3 rebuilt context frames; its commit
  (the cache rebuild) one pass over 3 frames with no context;
- SkyReels-V2: the window of 25 latent frames at 544 x 960, dense, two passes (guidance) per call;
  no commit (diffusion forcing keeps no KV cache);
- MAGI-1 4.5B at 720 x 720: a target call is two passes over the staged window's 4 chunks (attending
  to 2, 3, 4 and 5 chunks) and one over the 4 chunks alone; a drafter call one window pass and one
  single-chunk pass; a commit one chunk attending to itself;
- the decode: one latent frame after a stream's first (4 pixel frames) through the Wan VAE at each
  configuration's latent size (the Wan VAE stands in for MAGI-1's own).

The reward's score was not measured (ImageReward's weights cannot be loaded on that machine): its
figure is the FLOPs estimate's. ``docs/adapters.md`` has the whole suite's results.
"""

from __future__ import annotations

DEVICE = "NVIDIA H200"
DATE = "2026-12-04"
SOURCE = (f"measured on one {DEVICE} ({DATE}) by scripts/gpu_suite.py: random weights, bfloat16 DiTs and "
          "Wan VAE, batch 1; the score is the FLOPs estimate (ImageReward not loaded)")

# seconds per component; the score per pixel frame comes from the FLOPs table
SECONDS: dict[str, dict[str, float]] = {
    "self-forcing-1.3B@832x480": {"target_call_s": 0.09224, "drafter_call_s": 0.09224, "target_commit_s": 0.09224,
                                  "drafter_commit_s": 0.09224, "decode_per_latent_frame_s": 0.09047},
    "krea-14B@832x480": {"target_call_s": 0.3724, "drafter_call_s": 0.09224, "target_commit_s": 0.3372,
                         "drafter_commit_s": 0.09224, "decode_per_latent_frame_s": 0.09047},
    "skyreels-v2-14B@540P": {"target_call_s": 13.93, "drafter_call_s": 2.751, "target_commit_s": 0.0,
                             "drafter_commit_s": 0.0, "decode_per_latent_frame_s": 0.1162},
    "magi-1-4.5B": {"target_call_s": 6.945, "drafter_call_s": 3.103, "target_commit_s": 0.3823,
                    "drafter_commit_s": 0.3823, "decode_per_latent_frame_s": 0.1158},
}

# the single passes the calls are composed of, and the decode in the other precisions (seconds)
PASSES: dict[str, float] = {
    "1.3B 832x480 block of 3, 11 cached frames": 0.09224, "1.3B 960x544 window of 25, one pass": 1.376,
    "14B 832x480 block of 3, 3 cached frames": 0.3724, "14B 832x480 block of 3, no context": 0.3372,
    "14B 960x544 window of 25, one pass": 6.963, "MAGI-1 4.5B 720x720 window": 2.72,
    "MAGI-1 4.5B 720x720 alone": 1.504, "MAGI-1 4.5B 720x720 one": 0.3823,
}
DECODE: dict[str, dict[str, float]] = {
    "832x480": {"float32": 0.4917, "float32_tf32": 0.1351, "bfloat16": 0.09047},
    "960x544": {"float32": 0.6405, "float32_tf32": 0.1758, "bfloat16": 0.1162},
    "720x720": {"float32": 0.6372, "float32_tf32": 0.1726, "bfloat16": 0.1158},
}

__all__ = ["DATE", "DECODE", "DEVICE", "PASSES", "SECONDS", "SOURCE"]
