"""The ``accelframe`` command line: plugins, generate, bench, and what plugins add.

Plugins add subcommands through ``accelframe_register_commands``; ``group="bench"`` puts one under
``accelframe bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from accelframe.errors import AccelframeError, ConfigError
from accelframe.registry import lazy

# Start-up imports no torch, numpy or av (``accelframe --help`` and ``accelframe plugins`` stay
# fast): commands import what they need, and a command's options are added when it runs.

EPILOG = """examples:
  accelframe plugins --json
  accelframe generate --prompt "a red circle moves left on a blue background" --out clip.mp4
  accelframe generate --adapter analytic --frames 9 --policy every-n:n=2 --json
  accelframe generate --adapter analytic --set plan=staircase --set steps=8 --frames 12
  accelframe --threads 1 generate --latent-frames 6
  accelframe bench overhead --json

Frames: --frames counts pixel frames (what the video holds), --latent-frames latent frames; a
Wan-family adapter makes 1 + 4 (L - 1) pixel frames from L latent ones, an adapter without a VAE
(analytic) one from each.

Threads: --threads N (before or after the command) runs torch on N CPU threads; the default is
the cores this process may use, never more than OMP_NUM_THREADS when that is set.

Plugins: entry points of group 'accelframe' load automatically; set
ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD=1 to load none, ACCELFRAME_DISABLE_PLUGINS=a,b to block some.
"""


def _value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: Sequence[str], field: str) -> dict[str, Any]:
    """``["k=v", ...]`` into a dict; a malformed item is a ConfigError naming it."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("accelframe", field, item, "KEY=VALUE")
        out[key.strip()] = _value(val)
    return out


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split on ``sep`` outside brackets, braces and quotes: ``a=[1,2],b="x,y"`` is two
    items, so that a JSON list, object or quoted string is one value."""
    parts, current, depth, quote = [], [], 0, ""
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(depth - 1, 0)
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_policy(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:k=v,k=v`` into (name, kwargs); a value may be a JSON list or object, or a
    quoted string, with commas in it (``scope:preset=[1,2]``)."""
    name, _, rest = spec.partition(":")
    if not name:
        raise ConfigError("accelframe", "--policy", spec, "NAME or NAME:KEY=VALUE,KEY=VALUE")
    return name, parse_assignments([p for p in split_top_level(rest) if p.strip()], "--policy")


# ---- frame counts ---------------------------------------------------------------------------


class _DeprecatedAlias(argparse.Action):
    """An old option name that still works and says which name replaced it."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        warnings.warn(f"{option_string} is deprecated: use {self.new}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_frame_options(p: argparse.ArgumentParser, *, pixel_help: str, latent_help: str,
                      default: int | None = None) -> Any:
    """``--frames N`` (pixel frames: what the video holds) and ``--latent-frames N``, one or the
    other: every command that makes video counts frames this way; :func:`frame_counts` converts
    once the adapter is built. Returns the mutually exclusive group."""
    count = p.add_mutually_exclusive_group()
    count.add_argument("--frames", type=int, default=default, metavar="N", help=pixel_help)
    count.add_argument("--latent-frames", type=int, default=None, metavar="N", help=latent_help)
    return count


class _LatentFrames(argparse.Action):
    """A latent frame count: an int >= 1, else a ConfigError naming the option as typed."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        if values < 1:
            raise ConfigError(parser.prog, str(option_string), values, "an int >= 1 (latent frames)")
        setattr(namespace, self.dest, values)


class _LatentFramesForNow(_LatentFrames):
    """``--frames N`` of a command that still counts it in latent frames: stores N as the latent
    count and warns that ``--frames`` will count pixel frames there, as in generate and stream."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        warnings.warn(f"{option_string} counts latent frames in {parser.prog}; it will count pixel frames, as in "
                      "generate and stream: use --latent-frames", FutureWarning, stacklevel=2)
        super().__call__(parser, namespace, values, option_string)


def add_latent_frame_options(p: argparse.ArgumentParser, *, latent_help: str, default: int | None = None) -> Any:
    """``--latent-frames N`` for a command that counts latent frames (a benchmark, calibration),
    stored as ``latent_frames``; ``--frames N`` still means the
    same there, with a FutureWarning (it will count pixel frames, as in :func:`add_frame_options`).
    Returns the mutually exclusive group."""
    count = p.add_mutually_exclusive_group()
    count.add_argument("--latent-frames", type=int, default=default, metavar="N", help=latent_help,
                       action=_LatentFrames)
    count.add_argument("--frames", type=int, dest="latent_frames", default=default, metavar="N",
                       action=_LatentFramesForNow,
                       help="deprecated: latent frames here, like --latent-frames (it will count pixel frames, as in "
                            "generate and stream)")
    return count


def frame_counts(adapter: Any, *, frames: int | None, latent_frames: int | None,
                 default_latent: int, owner: str | None = None) -> tuple[int, int]:
    """(latent, pixel) frames of a request asked in pixel frames (``frames``) or latent frames.
    An adapter with a video VAE converts (``latent_frames(pixel)`` raises naming the valid counts);
    without one, a pixel frame is a latent frame. With ``owner`` (a command), a pixel count the VAE
    cannot make is a ConfigError of ``owner`` naming ``--frames``, the flag the user typed."""
    from accelframe.adapter import latent_frames as to_latent, pixel_frames as to_pixel

    if frames is not None:
        try:
            latent = to_latent(adapter, frames)
        except ConfigError as exc:
            if owner is None:
                raise
            raise ConfigError(owner, "--frames", frames, exc.allowed) from None
    elif latent_frames is not None:
        latent = latent_frames
    else:
        latent = default_latent
    pixel = to_pixel(adapter, latent) if isinstance(latent, int) and latent >= 1 else latent
    return latent, pixel


def _fresh_path(path: str | None, force: bool, flag: str, owner: str) -> Path | None:
    """An output path checked before work (:func:`accelframe.outputs.check_output`): its folder is
    created or a ConfigError of ``owner`` (the command) names why not; an existing file is refused
    unless ``--force``."""
    from accelframe.outputs import check_output

    return check_output(path, owner=owner, field=flag, force=force)


# ---- plugins --------------------------------------------------------------------------------


KNOB_KINDS = ("adapter", "policy", "scorer")


def _cmd_plugin_knobs(name: str, as_json: bool, hooks: Any) -> int:
    """``accelframe plugins NAME``: what NAME is and the keyword arguments it takes."""
    from accelframe import knobs as kn
    from accelframe.errors import did_you_mean

    reg = hooks.registry()
    entries = [e for kind in KNOB_KINDS for e in reg.of_kind(kind) if e.name == name]
    if not entries:
        names = sorted({e.name for kind in KNOB_KINDS for e in reg.of_kind(kind)})
        raise ConfigError("accelframe plugins", "NAME", name, "a registered adapter, policy or scorer, "
                          + did_you_mean(name, names, "one of"))
    docs = []
    for e in entries:
        found = kn.knobs(e.factory)
        docs.append({"name": e.name, "kind": e.kind, "plugin": e.plugin, "description": e.description,
                     **({"policy_kind": e.policy_kind} if e.policy_kind else {}),
                     "summary": kn.summary(e.factory),
                     "knobs": None if found is None else [k.to_dict() for k in found]})
    if as_json:
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
        return 0
    for d in docs:
        kind = f"{d['policy_kind']} policy" if d.get("policy_kind") else d["kind"]
        print(f"{d['name']} ({kind}, plugin {d['plugin']}): {d['description'] or d['summary']}")
        if d["knobs"] is None:
            print("  knobs: not declared (its factory takes **kwargs; see its documentation)")
            continue
        if not d["knobs"]:
            print("  knobs: none")
            continue
        width = max(len(k["name"]) for k in d["knobs"]) + 2
        for k in d["knobs"]:
            default = "(required)" if k["required"] else json.dumps(k["default"])
            allowed = f"  {k['allowed']}" if k["allowed"] else ""
            print(f"  {k['name']:<{width}}default {default}{allowed}")
    return 0


def _cmd_plugins(args: argparse.Namespace, hooks: Any) -> int:
    if getattr(args, "name", None) is not None:
        return _cmd_plugin_knobs(args.name, args.json, hooks)
    reg = hooks.registry()
    doc = {
        "plugins": [
            {"name": i.name, "version": i.version, "kind": i.kind, "distribution": i.distribution,
             "hooks": list(i.hooks)} for i in hooks.plugin_infos()
        ],
        "registered": {
            kind: [{"name": e.name, "plugin": e.plugin, "description": e.description,
                    **({"policy_kind": e.policy_kind} if e.policy_kind else {}),
                    **({"group": e.group} if e.group else {})} for e in reg.of_kind(kind)]
            for kind in ("adapter", "policy", "scorer", "command", "source")
        },
        "failed": [{"name": f.name, "value": f.value, "error": f.error} for f in hooks.failures],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for p in doc["plugins"]:
        version = p["version"] or "-"
        print(f"{p['name']:<24} {version:<8} {p['kind']:<12} {', '.join(p['hooks']) or '-'}")
    for kind, entries in doc["registered"].items():
        if entries:
            print("\npolicies:" if kind == "policy" else f"\n{kind}s:")
            for e in entries:
                print(f"  {e['name']:<22} ({e['plugin']}) {e['description']}")
    for f in doc["failed"]:
        print(f"\nfailed to load {f['name']} ({f['value']}): {f['error']}", file=sys.stderr)
    return 0


# ---- generate -------------------------------------------------------------------------------


DEFAULT_PROMPT = "a red circle moves left on a blue background"


def _configure_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", default=None, metavar="FILE",
                   help="a stack file (TOML: adapter, drafter, policies and options; docs/stacking.md): the "
                        "pipeline to run; --policy adds policies after its stack")
    p.add_argument("--adapter", default=None,
                   help="registered adapter name (default: self-forcing, the embedded world's trained target, "
                        "when the adapters are installed; else analytic)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter keyword argument, repeatable (e.g. --set plan=staircase)")
    p.add_argument("--drafter", default=None, help="registered adapter name of a drafter")
    p.add_argument("--drafter-set", action="append", default=[], metavar="KEY=VALUE",
                   help="drafter keyword argument, repeatable; needs --drafter")
    p.add_argument("--drafter-context", default=None, choices=("own", "emitted"),
                   help="what the drafter conditions on: its own drafts (SDVG, default) or the emitted blocks; "
                        "needs --drafter")
    p.add_argument("--policy", action="append", default=[], metavar="NAME[:K=V,...]",
                   help="add a policy to the stack, repeatable; asked in the order given")
    p.add_argument("--prompt", action="append", default=None,
                   help=f"prompt, repeatable (one batch row each; default: {DEFAULT_PROMPT!r})")
    count = add_frame_options(
        p, pixel_help="pixel frames to generate, the frames the video holds (default: 105 = 27 latent frames "
                      "for a Wan-family adapter, else 9); a Wan VAE makes 1 + 4k",
        latent_help="latent frames to generate instead (default: 27 for a Wan-family adapter, else 9); the "
                    "same as --frames for an adapter without a VAE (analytic)")
    # the old name of --frames (pixel frames), kept working
    count.add_argument("--pixel-frames", type=int, dest="frames", action=_DeprecatedAlias, new="--frames",
                       help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--max-reuse", type=int, default=None,
                   help="at most this many non-recompute calls in a row (a unit's first call is always computed; "
                        "default: none, no limit)")
    p.add_argument("--strict", action="store_true", help="re-raise policy failures")
    p.add_argument("--out", default=None,
                   help="write the video: .mp4 (plus a .png strip of frames beside it), .png (the strip "
                        "only) or .pt (frames, latents and the summary); one file per prompt when several")
    p.add_argument("--upscale", type=int, default=4,
                   help="integer nearest-neighbour upscaling of .mp4 / .png output (default: 4)")
    p.add_argument("--trace", default=None, help="write the full trace to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite --out / --trace if they exist")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _default_adapter(hooks: Any) -> str:
    names = {e.name for e in hooks.registry().of_kind("adapter")}
    return "self-forcing" if "self-forcing" in names else "analytic"


def _outputs(out: Path, n: int) -> list[Path]:
    """One output path per prompt: ``out`` itself for one, ``stem-i.suffix`` for several."""
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


OUT_SUFFIXES = (".mp4", ".png", ".pt")


def _check_pixels(args: argparse.Namespace, adapter: str, decodes: bool) -> None:
    """A video or png output needs an adapter that decodes to pixels (checked before the model runs
    from its capabilities, and after from the result)."""
    if args.out is not None and Path(args.out).suffix != ".pt" and not decodes:
        raise ConfigError("accelframe generate", "--out", args.out,
                          f"a .pt path: adapter {adapter!r} makes latents, not pixels")


def _write_generated(args: argparse.Namespace, paths: list[Path], trace_path: Path | None, result: Any,
                     summary: dict[str, Any], pipe: Any, adapter: str, n: int) -> None:
    """Every output of one ``generate`` under temporary names, renamed into place together when all
    are complete (an error or an interrupt leaves none of them)."""
    import torch

    from accelframe.outputs import atomic_paths

    targets = paths + ([trace_path] if trace_path is not None else [])
    if not targets:
        return
    _check_pixels(args, adapter, decodes=result.frames is not None)
    with atomic_paths(targets) as temps:
        tmp = dict(zip(targets, temps))
        if args.out is not None and Path(args.out).suffix == ".pt":
            torch.save({"latents": result.latents, "frames": result.frames, "summary": summary}, tmp[paths[0]])
        elif args.out is not None:
            from accelframe.media import write_video

            from accelframe.adapter import adapter_fps

            fps = adapter_fps(pipe.adapter)
            for i, path in enumerate(_outputs(Path(args.out), n)):
                # an .mp4's strip goes beside its temporary: the .png's temporary (one token, one stem)
                write_video(tmp[path], result.frames[i], fps, upscale_factor=args.upscale)
        if trace_path is not None:
            tmp[trace_path].write_text(json.dumps(result.to_json(), indent=1))


FEW_STEPS = 8  # steps per unit at or below which a reuse policy has little to work with


def idle_step_policies(pipe: Any, result: Any) -> list[str]:
    """One note per step policy of the stack that made no non-recompute decision in ``result``
    (read off the trace: who decided each model call, and how): such a policy saved nothing."""
    from collections import Counter

    steps = [e for e in result.trace.events if e["event"] == "step"]
    if not steps:  # trace off, or no denoising calls
        return []
    per_unit = Counter((e["model"], e["unit"]) for e in steps)
    n = max(per_unit.values())
    notes = []
    for p in pipe.stack:
        if p.kind != "step":
            continue
        mine = [e for e in steps if e["by"] == p.name]
        if any(e["mode"] != "recompute" for e in mine):
            continue
        if not mine:
            notes.append(f"step policy {p.name!r} decided no model call ({n} steps per unit): the policies "
                         f"before it in the stack, or the engine, decided every one; it saved nothing")
            continue
        why = ("few steps leave a cache / predict policy little to reuse, the model input changes too much "
               "from one call to the next (reuse policies such as SCOPE are tuned for 30-50 steps: try "
               "--adapter skyreels-v2-df or magi-1, or looser thresholds)" if n <= FEW_STEPS else
               "its thresholds were never met on this run; looser ones let it cache or predict "
               "(docs/policies.md lists its knobs)")
        notes.append(f"step policy {p.name!r} recomputed every call on this adapter ({n} steps per unit): "
                     f"{why}; it saved nothing")
    return notes


def _cmd_generate(args: argparse.Namespace, hooks: Any) -> int:
    from accelframe.pipeline import Pipeline
    from accelframe.progress import progress_bar

    prompts = args.prompt or [DEFAULT_PROMPT]
    for flag, given in (("--drafter-set", args.drafter_set), ("--drafter-context", args.drafter_context)):
        if given and args.drafter is None and args.stack is None:  # it would be silently ignored
            raise ConfigError("accelframe generate", flag, given, f"nothing without a drafter: {flag} needs "
                              "--drafter NAME (a registered adapter that drafts)")
    if args.upscale < 1:
        raise ConfigError("accelframe generate", "--upscale", args.upscale, "an int >= 1")
    paths: list[Path] = []
    if args.out is not None:
        suffix = Path(args.out).suffix
        if suffix not in OUT_SUFFIXES:
            raise ConfigError("accelframe generate", "--out", args.out,
                              "a path ending in " + ", ".join(OUT_SUFFIXES))
        # a .pt holds every prompt's frames; a video is one file (and its strip) per prompt
        paths = [Path(args.out)] if suffix == ".pt" else _outputs(Path(args.out), len(prompts))
        if suffix == ".mp4":
            paths += [p.with_suffix(".png") for p in paths]
            try:
                import av  # noqa: F401
            except ImportError:
                raise ConfigError("accelframe generate", "--out", args.out,
                                  "a .pt or .png path, or install PyAV (pip install av) to write .mp4") from None
        for p in paths:
            _fresh_path(str(p), args.force, "--out", "accelframe generate")
    if args.trace is not None and Path(args.trace).resolve() in {p.resolve() for p in paths}:
        raise ConfigError("accelframe generate", "--trace", args.trace,
                          "a path other than the files --out writes (" + ", ".join(map(str, paths)) + ")")
    trace_path = _fresh_path(args.trace, args.force, "--trace", "accelframe generate")
    if args.stack is not None:
        pipe = pipeline_from_stack(args, hooks, "accelframe generate", GENERATE_STACK_CONFLICTS)
        adapter = pipe.adapter_name
    else:
        adapter = args.adapter or _default_adapter(hooks)
        pipe = Pipeline(adapter, adapter_kwargs=parse_assignments(args.set, "--set"),
                        drafter=args.drafter,
                        drafter_kwargs=parse_assignments(args.drafter_set, "--drafter-set") or None,
                        hooks=hooks, strict=args.strict, max_reuse=args.max_reuse,
                        drafter_context=args.drafter_context or "own")
    for spec in args.policy:
        name, kw = parse_policy(spec)
        pipe.use(name, **kw)
    from accelframe.adapter import (DECODE, PixelFrames, QualityDescriber, QualityMeter, adapter_device,
                                    capabilities, feature, pixel_size)

    _check_pixels(args, adapter, decodes=DECODE in capabilities(pipe.adapter))
    has_vae = feature(pipe.adapter, PixelFrames) is not None
    latent, pixel = frame_counts(pipe.adapter, frames=args.frames, latent_frames=args.latent_frames,
                                 default_latent=27 if has_vae else 9,  # raises naming the valid counts
                                 owner="accelframe generate")
    if args.out is not None and Path(args.out).suffix in (".mp4", ".png"):
        from accelframe.limits import check_upscale

        check_upscale("accelframe generate", "--upscale", args.upscale, pixel_size(pipe.adapter), frames=pixel,
                      device=adapter_device(pipe.adapter))  # before the model runs
    req = pipe.request(prompts, num_frames=latent, seed=args.seed)
    units = len(pipe.adapter.units(req))
    with progress_bar(total=units, desc="generate", unit="unit", quiet=args.json) as bar:
        result = pipe.generate(req, on_unit=lambda *a: bar.update(1))
    stats = result.stats.to_dict()
    if result.frames is not None:
        pixel = int(result.frames.shape[1])  # what the video holds
    meter = feature(pipe.adapter, QualityMeter)
    quality = None
    if meter is not None and result.frames is not None:
        quality = meter.measure_quality(result.frames, prompts)
    notes = idle_step_policies(pipe, result)
    if getattr(pipe.stream_options, "stream_batch", False):
        notes.append(f"the stack file {args.stack} asks for the stream batch ([stream] stream_batch = true), which "
                     "accelframe stream and serve run; generate ran its units one after another")
    summary = {
        "adapter": adapter, "drafter": pipe.drafter_name, "policies": pipe.policies, "stack": args.stack,
        "prompts": prompts, "frames": pixel, "pixel_frames": pixel, "latent_frames": latent, "seed": args.seed,
        "wall_s": stats["wall_s"], "model_calls": stats["calls"], "blocks": stats["blocks"],
        "fallbacks": stats["fallbacks"], "time_s": stats["time_s"],
        "latents_shape": list(result.latents.shape),
        "frames_shape": None if result.frames is None else list(result.frames.shape),
        "quality": quality, "notes": notes,
        "out": [str(p) for p in paths] or None, "trace": str(trace_path) if trace_path else None,
    }
    _write_generated(args, paths, trace_path, result, summary, pipe, adapter, len(prompts))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        c = stats["calls"]["target"]
        print(f"{adapter}: {pixel} frames ({latent} latent) in {stats['wall_s']:.3f} s; target calls "
              f"computed {c['computed']}, cached {c['cached']}, predicted {c['predicted']}, "
              f"commit {c['commit']}" + (f"; wrote {', '.join(map(str, paths))}" if paths else ""))
        # the adapter words its own records (their fields are its measure's, not the core's)
        describer = feature(pipe.adapter, QualityDescriber)
        for q in quality or []:
            line = describer.describe_quality(q) if describer is not None else None
            if line is not None:
                print(line)
    for note in notes:  # on stderr, after the result
        print(f"accelframe: note: {note}", file=sys.stderr)
    return 0


# ---- stack files ----------------------------------------------------------------------------

# options that build the pipeline: with --stack FILE the file does, so setting them is an error
GENERATE_STACK_CONFLICTS = (("set", "--set", "[adapter] settings"), ("drafter", "--drafter", "[drafter] name"),
                            ("drafter_set", "--drafter-set", "[drafter] settings"),
                            ("drafter_context", "--drafter-context", "[drafter] context"),
                            ("max_reuse", "--max-reuse", "[pipeline] max_reuse"))


def stack_config(args: argparse.Namespace, owner: str, conflicts: Sequence[tuple[str, str, str]] = ()) -> Any:
    """The :class:`~accelframe.stackfile.StackConfig` of ``args.stack`` for a command, read before any
    model is loaded: an option in ``conflicts`` (``(dest, flag, the file's key)``) set beside it is
    a ConfigError naming the flag (the file sets that), and so is ``--adapter`` naming another
    adapter than the file's; a bad file is a :class:`~accelframe.stackfile.StackFileError`."""
    from accelframe import stackfile

    for dest, flag, key in conflicts:
        value = getattr(args, dest, None)
        if value not in (None, [], False):
            raise ConfigError(owner, flag, value, f"nothing with --stack {args.stack}: the stack file sets it "
                                                  f"(its {key})")
    cfg = stackfile.load(args.stack)
    wanted = getattr(args, "adapter", None)
    if wanted is not None and wanted != cfg.adapter:
        raise ConfigError(owner, "--adapter", wanted, f"{cfg.adapter!r}, the adapter of the stack file {args.stack} "
                                                      "(or leave --adapter out): the file was made for another adapter")
    return cfg


def pipeline_from_stack(args: argparse.Namespace, hooks: Any, owner: str,
                        conflicts: Sequence[tuple[str, str, str]] = (), **overrides: Any) -> Any:
    """The pipeline of ``args.stack`` on ``hooks`` (:func:`stack_config`); ``--strict`` turns
    strict on."""
    cfg = stack_config(args, owner, conflicts)
    if getattr(args, "strict", False):
        overrides["strict"] = True
    from accelframe.pipeline import Pipeline

    return Pipeline.from_config(cfg, hooks=hooks, **overrides)


# ---- parser ---------------------------------------------------------------------------------

Runner = Callable[[argparse.Namespace, Any], int]

THREADS_HELP = ("torch CPU threads for the command (default: the cores this process may use, never more "
                "than OMP_NUM_THREADS when that is set)")


def _nothing(parser: argparse.ArgumentParser) -> None:
    pass


class _Parser(argparse.ArgumentParser):
    """A parser whose options are added when it is first used (to parse or to print help): building
    the whole command tree runs no command's ``configure`` and imports no command's module, so that
    ``accelframe --help`` starts without torch. Every command also takes the global ``--threads``."""

    def __init__(self, *args: Any, configure: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = configure or _nothing  # a command's own subcommands take --threads too

    def _configure_now(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending(self)
        if "--threads" not in self._option_string_actions:  # a command's own --threads wins
            self.add_argument("--threads", type=int, dest="accelframe_threads", default=argparse.SUPPRESS,
                              metavar="N", help=THREADS_HELP)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._configure_now()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._configure_now()
        return super().format_help()

    def format_usage(self) -> str:
        self._configure_now()
        return super().format_usage()

    def error(self, message: str) -> Any:
        """A usage error as one line, ``PROG: error: MESSAGE (see PROG --help)``, exit status 2 (not
        argparse's whole usage block first): every command and plugin command parses through here."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(hooks: Any) -> argparse.ArgumentParser:
    from accelframe import __version__

    parser = _Parser(
        prog="accelframe", description="Stackable acceleration policies for autoregressive "
        "video diffusion: step (cache / predict / recompute), block (drafter + router) and "
        "stream (SLO batching) levels behind one scheduler API.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"accelframe {__version__}")
    parser.add_argument("--threads", type=int, dest="accelframe_threads", default=None, metavar="N",
                        help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def plugins_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", nargs="?", default=None, metavar="NAME",
                       help="an adapter, policy or scorer: print its knobs (keyword arguments) with their "
                            "defaults and allowed values")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("plugins", help="list loaded plugins, their hooks and registered names",
                       configure=plugins_options)
    p.set_defaults(run=_cmd_plugins)

    p = sub.add_parser("generate", help="generate a video with an adapter and a policy stack",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       configure=_configure_generate)
    p.set_defaults(run=_cmd_generate)

    bench = sub.add_parser("bench", help="benchmarks (accelerated and baseline in one run)", configure=_nothing)
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench.set_defaults(run=lambda a, h: _missing(bench))
    p = sub.add_parser("stream", help="run live streams (a world clip, a video file or text) through "
                       "StreamDiffusionV2 and write mp4s", configure=lazy("accelframe.streaming.cli:configure"))
    p.set_defaults(run=lambda a, h: lazy("accelframe.streaming.cli:run")(a, h))
    p = sub.add_parser("serve", help="serve live sessions over WebSockets with a page to drive them "
                       "(needs accelframe[serve])", configure=lazy("accelframe.serve.cli:configure"),
                       description="Serve live sessions: text-to-video from a prompt, or video-to-video from "
                       "frames a client sends, all sessions through one stream loop under one SLO "
                       "(slo-batch admits or refuses new sessions). Open the printed address in a browser "
                       "for the page; the WebSocket protocol is in docs/serve.md.")
    p.set_defaults(run=lambda a, h: lazy("accelframe.serve.cli:run")(a, h))

    # subcommands from plugins: their options are added (their modules imported) when they run
    groups = {None: sub, "bench": bench_sub}
    for entry in hooks.registry().of_kind("command"):
        target = groups.get(entry.group)
        if target is None:
            raise ConfigError(f"command {entry.name!r} of plugin {entry.plugin!r}", "group",
                              entry.group, "None or 'bench'")
        if entry.name in target.choices:
            raise ConfigError(f"command {entry.name!r} of plugin {entry.plugin!r}", "name",
                              entry.name, "a name no other command uses")
        p = target.add_parser(entry.name, help=entry.description, configure=entry.configure or _nothing)
        p.set_defaults(run=lambda a, h, fn=entry.factory: run_command(fn, a, h))
    return parser


def run_command(run: Callable[..., Any], args: argparse.Namespace, hooks: Any) -> int:
    """Run a registered command: ``run(args, hooks)`` with the CLI's plugin manager, so that every
    command sees every loaded plugin; a ``run(args)`` of one parameter (the older contract) gets
    ``args`` only."""
    import inspect

    try:
        params = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):  # a builtin or a C callable: assume the full contract
        return run(args, hooks)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.name == "hooks" and p.kind is p.KEYWORD_ONLY for p in params):  # run(args, *, hooks=None)
        return run(args, hooks=hooks)
    takes_hooks = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
    return run(args, hooks) if takes_hooks else run(args)


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), never more than ``OMP_NUM_THREADS``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # "4,2": nested levels
    if omp.isdigit() and int(omp) >= 1:
        n = min(n, int(omp))
    return max(1, n)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run a command on ``n`` torch threads (None: :func:`default_threads`): set now when torch is
    loaded, else through ``OMP_NUM_THREADS``, which torch reads when the command imports it (child
    processes inherit it too). Both are restored afterwards, for in-process callers."""
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("accelframe", "--threads", n, "an int >= 1")
    old_env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_env
        if old is not None:
            torch.set_num_threads(old)


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None, *, shown: set[str] | None = None) -> None:
    """A warning as one ``accelframe: warning: ...`` line on stderr, above any status line; one
    whose text is in ``shown`` (the warnings this command run printed) is not printed again."""
    from accelframe.progress import write_above

    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    if shown is not None:
        if text in shown:  # the same warning from each chunk, thread or call: said once per run
            return
        shown.add(text)
    if file is not None and file is not sys.stderr:
        file.write(f"accelframe: warning: {text}\n")
    else:
        write_above(f"accelframe: warning: {text}")


def main(argv: Sequence[str] | None = None) -> int:
    from accelframe.plugins import create_hooks
    from accelframe.progress import end_status, write_above

    try:
        with warnings.catch_warnings():
            shown: set[str] = set()  # each distinct warning is printed once per command run
            warnings.showwarning = functools.partial(_show_warning, shown=shown)
            hooks = create_hooks()
            parser = build_parser(hooks)
            args = parser.parse_args(argv)
            if getattr(args, "run", None) is None:
                parser.print_help(sys.stderr)
                return 2
            with torch_threads(getattr(args, "accelframe_threads", None)):
                try:
                    return int(args.run(args, hooks) or 0)
                finally:
                    end_status()  # whatever follows starts on a line of its own
    except AccelframeError as exc:
        write_above(f"accelframe: error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
