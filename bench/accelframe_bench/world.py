"""``accelframe bench world``: quality of the world's models on held-out prompts, in one process.

On ``--clips`` held-out prompts (combinations never seen in training), each with its own seed:

- ``target_quality``: the target DiT through ``--adapter`` (Self-Forcing's block loop by default),
  9 blocks (27 latent frames, 105 pixel frames), decoded by the world VAE, measured by
  :mod:`accelframe_adapters.world.quality`;
- ``drafter_quality``: the drafter DiT through the same loop;
- ``noise_quality``: standard-normal latents of the same shape decoded by the world VAE;
- ``truth_quality`` / ``vae_quality``: the rendered clips and their VAE reconstructions (the ceiling);
- ``prompt_adherence``: fraction of clips whose colour, shape and direction are all right (target),
  and ``drafter_adherence``;
- timing of one 9-block clip (batch 1) and model calls per second for target and drafter, and the
  drafter's speed-up over the target (a ratio measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import torch

from accelframe.errors import ConfigError
from accelframe.progress import progress_bar
from accelframe_adapters.wan.vae import pixel_frames
from accelframe_adapters.world import clips, quality
from accelframe_adapters.world.models import LATENT_FRAMES
from accelframe_adapters.world.training.common import at_least

ADAPTERS = ("self-forcing", "krea-realtime", "skyreels-v2-df")


def _pipe(hooks: Any, adapter: str, size: str, extra: dict[str, Any]) -> Any:
    from accelframe.pipeline import Pipeline

    return Pipeline(adapter, hooks=hooks, adapter_kwargs={"size": size, **extra}, trace=False)


def _calls(stats: dict[str, Any]) -> int:
    c = stats["calls"]["target"]
    return int(c["computed"] + c.get("commit", 0))


def _generate(pipe: Any, scenes: list[clips.Scene], seeds: list[int], batch: int, bar: Any) -> dict[str, Any]:
    """Generate every scene (``batch`` prompts per call); frames, wall time and model calls."""
    frames, wall, calls = [], 0.0, 0
    for i in range(0, len(scenes), batch):
        part = scenes[i:i + batch]
        t0 = time.perf_counter()
        res = pipe.generate([s.prompt for s in part], num_frames=LATENT_FRAMES, seed=seeds[i])
        wall += time.perf_counter() - t0
        calls += _calls(res.stats.to_dict())
        frames.extend(res.frames)
        bar.update(len(part))
    return {"frames": frames, "wall_s": wall, "calls": calls}


def _measure(frames: list[torch.Tensor], scenes: list[clips.Scene]) -> list[quality.ClipQuality]:
    return [quality.measure(f, s) for f, s in zip(frames, scenes)]


def run_bench(*, n: int, adapter: str = "self-forcing", seed: int = 0, batch: int = 8,
              adapter_kwargs: dict[str, Any] | None = None, quiet: bool = False,
              hooks: Any = None) -> dict[str, Any]:
    """The quality document. ``hooks``: the plugin manager both pipelines run on (default:
    :func:`accelframe_bench.hooks.default_hooks`)."""
    from accelframe_bench.hooks import or_default

    if adapter not in ADAPTERS:
        raise ConfigError("bench world", "adapter", adapter, "one of " + ", ".join(ADAPTERS))
    for field, value, minimum in (("clips", n, 1), ("batch", batch, 1), ("seed", seed, 0)):
        at_least("bench world", field, value, minimum)
    extra = dict(adapter_kwargs or {})
    scenes = clips.sample_scenes(n, 7_000 + seed, split="eval")
    rng = random.Random(seed)
    seeds = [rng.randrange(2**31) for _ in scenes]
    hooks = or_default(hooks)
    target = _pipe(hooks, adapter, "world", extra)
    drafter = _pipe(hooks, adapter, "world-drafter", extra)
    vae = target.adapter.vae
    total = 2 * n + 2
    with progress_bar(total=total, desc="bench world", unit="clip", quiet=quiet) as bar:
        # one clip at batch 1 for the latency of a 9-block clip (after a warm-up call)
        target.generate([scenes[0].prompt], num_frames=3, seed=0)
        drafter.generate([scenes[0].prompt], num_frames=3, seed=0)
        single = {}
        for name, pipe in (("target", target), ("drafter", drafter)):
            t0 = time.perf_counter()
            res = pipe.generate([scenes[0].prompt], num_frames=LATENT_FRAMES, seed=seeds[0])
            single[name] = {"wall_s": time.perf_counter() - t0, "calls": _calls(res.stats.to_dict())}
            bar.update(1)
        gen_t = _generate(target, scenes, seeds, batch, bar)
        gen_d = _generate(drafter, scenes, seeds, batch, bar)
    g = torch.Generator().manual_seed(seed)
    c, h, w = target.adapter.latent_shape
    truth = [clips.render(s, sd) for s, sd in zip(scenes, seeds)]
    with torch.no_grad():
        noise_frames, recon = [], []
        for i in range(0, n, batch):
            z = torch.randn(min(batch, n - i), c, LATENT_FRAMES, h, w, generator=g)
            noise_frames.extend(((vae.decode(z) + 1) / 2).permute(0, 2, 1, 3, 4))
            video = torch.stack(truth[i:i + batch]).permute(0, 2, 1, 3, 4) * 2 - 1
            recon.extend(((vae.decode(vae.encode(video)) + 1) / 2).permute(0, 2, 1, 3, 4))
    q_t, q_d = _measure(gen_t["frames"], scenes), _measure(gen_d["frames"], scenes)
    q_n, q_truth, q_vae = _measure(noise_frames, scenes), _measure(truth, scenes), _measure(recon, scenes)
    s_t, s_d = quality.summarise(q_t), quality.summarise(q_d)
    per_clip_t, per_clip_d = single["target"]["wall_s"], single["drafter"]["wall_s"]
    return {
        "config": {"adapter": adapter, "adapter_kwargs": extra, "clips": n, "seed": seed, "batch": batch,
                   "latent_frames": LATENT_FRAMES, "pixel_frames": pixel_frames(LATENT_FRAMES),
                   "threads": torch.get_num_threads()},
        "target_quality": s_t["quality"], "drafter_quality": s_d["quality"],
        "noise_quality": quality.summarise(q_n)["quality"],
        "truth_quality": quality.summarise(q_truth)["quality"], "vae_quality": quality.summarise(q_vae)["quality"],
        "prompt_adherence": s_t["adherence"], "drafter_adherence": s_d["adherence"],
        "target": s_t, "drafter": s_d,
        "timing": {
            "target_clip_s": per_clip_t, "drafter_clip_s": per_clip_d,
            "drafter_speedup": per_clip_t / per_clip_d,
            "target_calls_per_clip": single["target"]["calls"],
            "target_calls_per_s": single["target"]["calls"] / per_clip_t,
            "drafter_calls_per_s": single["drafter"]["calls"] / per_clip_d,
            "batched_target_s_per_clip": gen_t["wall_s"] / n, "batched_drafter_s_per_clip": gen_d["wall_s"] / n,
        },
        "clips": [{"prompt": s.prompt, "seed": sd, "target": a.to_dict(), "drafter": b.to_dict()}
                  for s, sd, a, b in zip(scenes, seeds, q_t, q_d)],
    }


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clips", type=int, default=48, help="held-out prompts to generate (default: 48)")
    p.add_argument("--quick", action="store_true", help="6 prompts: under a minute on 2 CPU cores")
    p.add_argument("--adapter", default="self-forcing", choices=ADAPTERS, help="loop (default: self-forcing)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter keyword argument for both models, repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--batch", type=int, default=8, help="prompts per generate call (default: 8)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe.cli import parse_assignments

    n = 6 if args.quick else args.clips
    doc = run_bench(n=n, adapter=args.adapter, seed=args.seed, batch=args.batch,
                    adapter_kwargs=parse_assignments(args.set, "--set"), quiet=args.json, hooks=hooks)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    t = doc["timing"]
    print(f"world quality on {n} held-out prompts ({args.adapter}): target {doc['target_quality']:.3f}, "
          f"drafter {doc['drafter_quality']:.3f}, decoded noise {doc['noise_quality']:.3f} "
          f"(rendered truth {doc['truth_quality']:.3f}, VAE reconstruction {doc['vae_quality']:.3f})")
    print(f"prompt adherence: target {doc['prompt_adherence']:.2f}, drafter {doc['drafter_adherence']:.2f}")
    print(f"a 9-block clip: target {t['target_clip_s']:.2f} s ({t['target_calls_per_s']:.1f} calls/s), "
          f"drafter {t['drafter_clip_s']:.2f} s ({t['drafter_calls_per_s']:.1f} calls/s); "
          f"drafter speed-up {t['drafter_speedup']:.2f}x")
    return 0


__all__ = ["ADAPTERS", "configure", "run", "run_bench"]
