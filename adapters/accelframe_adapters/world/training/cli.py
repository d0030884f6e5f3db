"""``accelframe world``: train the embedded world's models and write their model cards.

    accelframe world train vae        # then text, target, drafter, reward (each needs the VAE and text)
    accelframe world distill          # the one-step drafter, from the drafter, on its own rollouts
    accelframe world cards            # model cards (markdown + loss-curve png) from the weights' records
    accelframe world sample --prompt "a red circle moves left on a blue background" --out clip.png
    accelframe world probe --model target   # does the DiT read the shape's colour from the prompt?

Each ``train`` writes ``world-MODEL.safetensors`` (default: the installed weights folder, which
holds the shipped files: replacing them needs ``--force``) and a ``.log.json`` loss log beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
import attrs

from accelframe.errors import ConfigError

MODELS = ("vae", "text", "target", "drafter", "reward", "magi", "decoder")


def configure(parser: argparse.ArgumentParser) -> None:
    from accelframe_adapters.world.models import FILES, WEIGHTS

    sub = parser.add_subparsers(dest="world_command", metavar="COMMAND")
    p = sub.add_parser("train", help="train one model of the world (on the CPU; the target and drafter DiTs also on a GPU)",
                       description="Train one world model from its seed. Order: vae, text, then target, "
                                   "drafter, reward and decoder (they read the VAE and the text encoder); "
                                   "'decoder' is the tiny decoder of the VAE's latents.")
    p.add_argument("model", choices=MODELS, help="which model")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default: the shipped model's; for the VAE use --PHASE-steps)")
    for phase in ("local",):
        p.add_argument(f"--{phase}-steps", type=int, default=None,
                       help=f"VAE only: steps of its {phase!r} phase (default: the shipped model's)")
    p.add_argument("--short-steps", type=int, default=None,
                   help="target, drafter and magi only: how many of the steps train on the first two blocks "
                        "(magi: its first chunk) alone (default: the shipped model's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the shipped model's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the shipped model's)")
    p.add_argument("--init", default=None,
                   help="target, drafter, magi and decoder only: continue from these weights (same config) instead of "
                        "from random")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the shipped model's)")
    p.add_argument("--out", default=None,
                   help=f"weights file to write (default: {WEIGHTS.name}/world-MODEL.safetensors of the package)")
    p.add_argument("--vae", default=None,
                   help=f"VAE weights the DiTs and the reward use (default: {FILES['vae']})")
    p.add_argument("--text", default=None, help=f"word-encoder weights (default: {FILES['text']})")
    p.add_argument("--clips", type=int, default=1000, help="training clips encoded for a DiT (default: 1000)")
    p.add_argument("--device", default=None,
                   help="target and drafter only: where the DiT trains, e.g. 'cuda' (default: cpu; the clips "
                        "are encoded on the CPU, and every random draw is made there, so the batches are "
                        "the CPU run's)")
    p.add_argument("--data", default=None, help="cache file of the encoded clips (read if made by the same VAE)")
    p.add_argument("--force", action="store_true",
                   help="replace existing outputs: the weights file, its .log.json and a --data file that is not "
                        "this run's cache")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")

    p = sub.add_parser("distill", help="distil the target into a one-step drafter, on the drafter's own rollouts",
                       description="Self-Forcing-style distillation (see docs/world.md): the student drafts every "
                                   "block in one call on its own earlier drafts; the target, on the same drafts and "
                                   "from the same noise, gives the block it would draw; the student regresses onto it.")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped drafter's)")
    p.add_argument("--batch", type=int, default=None, help="rollouts per step (default: the shipped drafter's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the shipped drafter's)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps of the learning rate (default: 30)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the shipped drafter's)")
    p.add_argument("--init", default=None,
                   help="student's starting weights: a drafter-config DiT (default: the installed world-drafter)")
    p.add_argument("--teacher", default=None, help="the teacher DiT (default: the installed world-target)")
    p.add_argument("--teacher-mode", choices=("euler", "loop"), default="euler",
                   help="the regression teacher's updates between its steps: euler (deterministic, default) or loop "
                        "(re-noise with fresh noise, as the self-forcing loop)")
    p.add_argument("--objective", choices=("regression", "dmd"), default="regression",
                   help="regression onto the target's block from the same noise (default; the shipped drafter's), "
                        "or dmd: distribution matching against the target with a critic trained online "
                        "(Self-Forcing's objective; its own defaults: 300 steps of batch 4 at lr 3e-05)")
    p.add_argument("--text", default=None, help=f"word-encoder weights (default: {FILES['text']})")
    p.add_argument("--target-context", type=float, default=0.0, metavar="P",
                   help="regression only: add a teacher-forced pass where each block's context is the target's "
                        "block with probability P instead of the student's own draft, as in an SDVG video "
                        "(default: 0, own rollouts only)")
    p.add_argument("--device", default=None,
                   help="regression only: where the student and the teacher run, e.g. 'cuda' (default: cpu; "
                        "every random draw is made on the CPU, so the batches are the CPU run's)")
    p.add_argument("--out", default=None,
                   help=f"weights file to write (default: {WEIGHTS.name}/{FILES['drafter']} of the package)")
    p.add_argument("--force", action="store_true", help="replace the weights file and its .log.json if they exist")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")

    p = sub.add_parser("cards", help="write the model cards (markdown and loss curves) next to the weights")
    p.add_argument("--dir", default=None, help="folder of the weights (default: the installed weights)")
    p.add_argument("--force", action="store_true", help="replace cards and loss curves that exist")
    p.add_argument("--quality", action="append", default=None, metavar="JSON",
                   help="output of 'accelframe bench world --json' (and, for the MAGI card, of 'accelframe bench "
                        "step --adapter magi-1 --json') to quote; repeat for several")

    p = sub.add_parser("sample", help="render a ground-truth clip of the world for a prompt")
    p.add_argument("--prompt", required=True, help="a prompt of the world's grammar")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--out", required=True, help=".mp4 (with a .png strip) or .png")
    p.add_argument("--force", action="store_true", help="replace --out (and its .png strip) if they exist")

    p = sub.add_parser("probe", help="does a world DiT read the shape's colour from the prompt? (x0 estimates)",
                       description="Noise the first block of rendered clips to each level, read the DiT's x0 "
                                   "estimate, decode it and check the colour inside the true shape and around it "
                                   "(see docs/world.md).")
    p.add_argument("--model", choices=("target", "drafter"), default="target", help="which DiT (default: target)")
    p.add_argument("--prompts", type=int, default=16, help="scenes probed (default: 16)")
    p.add_argument("--split", choices=("eval", "train"), default="eval",
                   help="held-out (eval, default) or training prompts")
    p.add_argument("--seed", type=int, default=7000, help="seed of the scenes and the noise (default: 7000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: a markdown table)")
    parser.set_defaults(world_parser=parser)


def _settings(defaults, args: argparse.Namespace):
    from accelframe_adapters.world.training.common import TrainSettings

    kw = attrs.asdict(defaults)
    for name in ("steps", "batch", "seed", "lr"):
        val = getattr(args, name)
        if val is not None:
            kw[name] = val
    return TrainSettings(**kw)


def _train(args: argparse.Namespace) -> int:
    from accelframe_adapters.world import models
    from accelframe_adapters.world.training import train_dit
    from accelframe_adapters.world.training import train_reward
    from accelframe_adapters.world.training import train_vae
    from accelframe_adapters.world.training import common as training

    out = Path(args.out) if args.out else models.WEIGHTS / models.FILES[args.model]
    needs = ("target", "drafter", "reward", "magi", "decoder")
    vae = args.vae or str(models.weights_path("vae")) if args.model in needs else None
    text = args.text or str(models.weights_path("text")) if args.model in needs else None
    quiet = args.json
    for flag in ("short_steps", "init", "device"):
        allowed = {"init": ("target", "drafter", "magi", "decoder"), "short_steps": ("target", "drafter", "magi"),
                   "device": ("target", "drafter")}[flag]
        if getattr(args, flag) is not None and args.model not in allowed:
            raise ConfigError(f"accelframe world train {args.model}", "--" + flag.replace("_", "-"),
                              getattr(args, flag), "only with the " + ", the ".join(allowed[:-1])
                              + " or the " + allowed[-1])
    if args.model == "vae":
        if args.steps is not None:
            raise ConfigError("accelframe world train vae", "--steps", args.steps,
                              "--local-steps (the VAE's steps are named per phase)")
        phases = []
        for ph in train_vae.PHASES:
            settings = _settings(ph.settings, args)
            steps = getattr(args, f"{ph.name}_steps")
            if steps is not None:
                settings = attrs.evolve(settings, steps=steps)
            phases.append(attrs.evolve(ph, settings=settings))
        rec = train_vae.train(out, phases=tuple(phases), force=args.force, quiet=quiet)
    elif args.model == "text":
        path = training.check_out(out, args.force)
        seed = args.seed or 0
        enc = train_dit.make_text(seed)
        rec = {"steps": 0, "seed": seed, "command": f"accelframe world train text --seed {seed}",
               "note": "frozen random rows: the DiTs and the reward learn their own projections of them"}
        training.save(path, enc.state_dict(), config={"text_dim": enc.text_dim, "text_len": enc.text_len,
                                                      "vocab": list(enc.vocab)}, training=rec, log={})
    elif args.model in ("target", "drafter"):
        rec = train_dit.train(args.model, out, vae=vae, text=text, clips_n=args.clips, data=args.data,
                              settings=_settings(train_dit.DEFAULTS[args.model], args),
                              short_steps=args.short_steps, init=args.init, force=args.force, quiet=quiet,
                              device=args.device or "cpu")
    elif args.model == "magi":
        from accelframe_adapters.world.training import train_magi

        rec = train_magi.train(out, vae=vae, text=text, clips_n=args.clips, data=args.data, init=args.init,
                               short_steps=args.short_steps, settings=_settings(train_magi.DEFAULTS, args),
                               force=args.force, quiet=quiet)
    elif args.model == "decoder":
        from accelframe_adapters.world.training import train_decoder

        rec = train_decoder.train(out, vae=vae, init=args.init, settings=_settings(train_decoder.DEFAULTS, args),
                                  force=args.force, quiet=quiet)
    else:
        rec = train_reward.train(out, vae=vae, text=text, settings=_settings(train_reward.DEFAULTS, args),
                                 force=args.force, quiet=quiet)
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        print(f"wrote {out} ({rec.get('wall_s', 0)} s)")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from accelframe_adapters.world import models
    from accelframe_adapters.world.training import distill

    out = Path(args.out) if args.out else models.WEIGHTS / models.FILES["drafter"]
    from accelframe_adapters.world.training import dmd

    settings = _settings(dmd.DEFAULTS if args.objective == "dmd" else distill.DEFAULTS, args)
    if args.warmup is not None:
        settings = attrs.evolve(settings, warmup=args.warmup)
    rec = distill.distill(out, teacher=args.teacher, init=args.init, text=args.text, mode=args.teacher_mode,
                          objective=args.objective, settings=settings, force=args.force, quiet=args.json,
                          device=args.device or "cpu", target_context=args.target_context)
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        print(f"wrote {out} ({rec.get('wall_s', 0)} s)")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from accelframe.media import write_video
    from accelframe_adapters.world import clips

    from accelframe.outputs import check_output

    out = Path(args.out)
    for p in [out] + ([out.with_suffix(".png")] if out.suffix.lower() == ".mp4" else []):  # the video and its strip
        check_output(p, owner="accelframe world sample", field="--out", force=args.force, suffixes=(".mp4", ".png"))
    scene = clips.parse_prompt(args.prompt)
    if scene is None:
        raise ConfigError("accelframe world sample", "--prompt", args.prompt,
                          "a prompt naming a shape, a colour, a direction and a background colour, e.g. "
                          "'a red circle moves left on a blue background'")
    doc = write_video(out, clips.render(scene, args.seed), clips.FPS, upscale_factor=4)
    print(json.dumps(doc))
    return 0


def _probe(args: argparse.Namespace) -> int:
    from accelframe_adapters.world import models
    from accelframe_adapters.world.training import probe

    dit = models.load_dit(args.model)
    vae = models.load_vae(models.weights_path("vae"))
    enc = models.load_text(models.weights_path("text"), dit.cfg.text_dim, dit.cfg.text_len)
    doc = probe.binding(dit, vae, enc, prompts=args.prompts, seed=args.seed, split=args.split)
    doc["model"] = args.model
    print(json.dumps(doc, indent=2) if args.json else probe.format_table(doc))
    return 0


# the least value of every count and seed the world commands take (--lr: a rate in (0, 1))
AT_LEAST = {"steps": 1, "local_steps": 1, "short_steps": 0, "batch": 1, "seed": 0, "clips": 1, "prompts": 1,
            "warmup": 0}


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option of a world command in its range, and ``--device`` one this machine has,
    before any work: a :class:`ConfigError` naming the option (the trainers and the probe check the
    same values again for callers from Python)."""
    from accelframe_adapters.world.training.common import at_least

    owner = f"accelframe world {args.world_command}"
    for dest, minimum in AT_LEAST.items():
        value = getattr(args, dest, None)
        if value is not None:
            at_least(owner, "--" + dest.replace("_", "-"), value, minimum)
    lr = getattr(args, "lr", None)
    if lr is not None and not 0 < lr < 1:  # NaN too
        raise ConfigError(owner, "--lr", lr, "a learning rate in (0, 1)")
    device = getattr(args, "device", None)
    if device is not None:
        from accelframe.validators import check_device

        check_device(owner, "--device", device)


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "world_command", None)
    if cmd is None:
        args.world_parser.print_help(sys.stderr)
        return 2
    check_numbers(args)
    if cmd == "train":
        return _train(args)
    if cmd == "distill":
        return _distill(args)
    if cmd == "cards":
        from accelframe_adapters.world.training.cards import write_cards

        for p in write_cards(args.dir, quality=args.quality, force=args.force):
            print(f"wrote {p}")
        return 0
    if cmd == "probe":
        return _probe(args)
    return _sample(args)


__all__ = ["AT_LEAST", "MODELS", "check_numbers", "configure", "run"]
