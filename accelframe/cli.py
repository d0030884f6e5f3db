"""The ``accelframe`` command line: plugins, generate, bench, and what plugins add.

Plugins add subcommands through ``accelframe_register_commands``; ``group="bench"`` puts one under
``accelframe bench``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from accelframe.errors import AccelframeError, ConfigError

EPILOG = """examples:
  accelframe plugins --json
  accelframe generate --prompt "a red circle moves left on a blue background" --out clip.mp4
  accelframe generate --adapter analytic --frames 9 --policy every-n:n=2 --json
  accelframe generate --adapter analytic --set plan=staircase --set steps=8 --frames 12
  accelframe bench overhead --json

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


def parse_policy(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:k=v,k=v`` into (name, kwargs)."""
    name, _, rest = spec.partition(":")
    if not name:
        raise ConfigError("accelframe", "--policy", spec, "NAME or NAME:KEY=VALUE,KEY=VALUE")
    return name, parse_assignments([p for p in rest.split(",") if p], "--policy")


def _fresh_path(path: str | None, force: bool, flag: str) -> Path | None:
    """An output path checked before work (:func:`accelframe.outputs.check_output`): its folder is
    created or a ConfigError names why not; an existing file is refused unless ``--force``."""
    from accelframe.outputs import check_output

    return check_output(path, owner="accelframe", field=flag, force=force)


# ---- plugins --------------------------------------------------------------------------------


def _cmd_plugins(args: argparse.Namespace, hooks: Any) -> int:
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
            for kind in ("adapter", "policy", "scorer", "command")
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


def _configure_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default=None,
                   help="registered adapter name (default: self-forcing, the embedded world's trained target, "
                        "when the adapters are installed; else analytic)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter keyword argument, repeatable (e.g. --set plan=staircase)")
    p.add_argument("--drafter", default=None, help="registered adapter name of a drafter")
    p.add_argument("--drafter-set", action="append", default=[], metavar="KEY=VALUE",
                   help="drafter keyword argument, repeatable")
    p.add_argument("--drafter-context", default="own", choices=("own", "emitted"),
                   help="what the drafter conditions on: its own drafts (SDVG, default) or the emitted blocks")
    p.add_argument("--policy", action="append", default=[], metavar="NAME[:K=V,...]",
                   help="add a policy to the stack, repeatable; asked in the order given")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt, repeatable (one batch row each)")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--frames", type=int, default=None,
                       help="latent frames to generate (default: 27 = 9 blocks for a Wan adapter, else 9)")
    count.add_argument("--pixel-frames", type=int, default=None, metavar="N",
                       help="pixel frames to generate instead, for adapters with a video VAE (Wan: 1 + 4k)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--max-reuse", type=int, default=None,
                   help="at most this many non-recompute calls in a row (a unit's first call is always computed)")
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


def _check_pixels(args: argparse.Namespace, pipe: Any, adapter: str) -> None:
    """Before the model runs: a video output needs an adapter that decodes to pixels."""
    from accelframe.adapter import DECODE

    if args.out is not None and Path(args.out).suffix != ".pt" \
            and DECODE not in getattr(pipe.adapter, "capabilities", (DECODE,)):
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
    if args.out is not None and Path(args.out).suffix != ".pt" and result.frames is None:
        raise ConfigError("accelframe generate", "--out", args.out,
                          f"a .pt path: adapter {adapter!r} makes latents, not pixels")
    with atomic_paths(targets) as temps:
        tmp = dict(zip(targets, temps))
        if args.out is not None and Path(args.out).suffix == ".pt":
            torch.save({"latents": result.latents, "frames": result.frames, "summary": summary}, tmp[paths[0]])
        elif args.out is not None:
            from accelframe.media import write_video

            fps = int(getattr(pipe.adapter, "fps", 16))
            for i, path in enumerate(_outputs(Path(args.out), n)):
                # an .mp4's strip goes beside its temporary: the .png's temporary (one token, one stem)
                write_video(tmp[path], result.frames[i], fps, upscale_factor=args.upscale)
        if trace_path is not None:
            tmp[trace_path].write_text(json.dumps(result.to_json(), indent=1))


def _cmd_generate(args: argparse.Namespace, hooks: Any) -> int:
    import torch

    from accelframe.pipeline import Pipeline
    from accelframe.progress import progress_bar

    prompts = args.prompt or ["a red circle moves left on a blue background"]
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
            _fresh_path(str(p), args.force, "--out")
    if args.upscale < 1:
        raise ConfigError("accelframe generate", "--upscale", args.upscale, "an int >= 1")
    trace_path = _fresh_path(args.trace, args.force, "--trace")
    adapter = args.adapter or _default_adapter(hooks)
    pipe = Pipeline(adapter, adapter_kwargs=parse_assignments(args.set, "--set"),
                    drafter=args.drafter,
                    drafter_kwargs=parse_assignments(args.drafter_set, "--drafter-set") or None,
                    hooks=hooks, strict=args.strict, max_reuse=args.max_reuse,
                    drafter_context=args.drafter_context)
    for spec in args.policy:
        name, kw = parse_policy(spec)
        pipe.use(name, **kw)
    _check_pixels(args, pipe, adapter)
    to_latent = getattr(pipe.adapter, "latent_frames", None)
    if args.pixel_frames is not None:
        if to_latent is None:
            raise ConfigError("generate", "pixel_frames", args.pixel_frames,
                              f"--frames instead: adapter {adapter!r} counts latent frames only")
        args.frames = to_latent(args.pixel_frames)  # raises naming the valid counts
    elif args.frames is None:
        args.frames = 27 if to_latent is not None else 9
    req = pipe.request(prompts, num_frames=args.frames, seed=args.seed)
    units = len(pipe.adapter.units(req))
    with progress_bar(total=units, desc="generate", unit="unit", quiet=args.json) as bar:
        result = pipe.generate(req, on_unit=lambda *a: bar.update(1))
    stats = result.stats.to_dict()
    measure = getattr(pipe.adapter, "measure_quality", None)
    quality = measure(result.frames, prompts) if measure is not None and result.frames is not None else None
    summary = {
        "adapter": adapter, "drafter": args.drafter, "policies": pipe.policies,
        "prompts": prompts, "frames": args.frames, "seed": args.seed,
        "wall_s": stats["wall_s"], "model_calls": stats["calls"], "blocks": stats["blocks"],
        "fallbacks": stats["fallbacks"], "time_s": stats["time_s"],
        "latents_shape": list(result.latents.shape),
        "frames_shape": None if result.frames is None else list(result.frames.shape),
        "quality": quality,
        "out": [str(p) for p in paths] or None, "trace": str(trace_path) if trace_path else None,
    }
    _write_generated(args, paths, trace_path, result, summary, pipe, adapter, len(prompts))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        c = stats["calls"]["target"]
        print(f"{adapter}: {args.frames} frames in {stats['wall_s']:.3f} s; target calls "
              f"computed {c['computed']}, cached {c['cached']}, predicted {c['predicted']}, "
              f"commit {c['commit']}" + (f"; wrote {', '.join(map(str, paths))}" if paths else ""))
        for q in quality or []:
            if q.get("quality") is not None:
                print(f"world quality {q['quality']:.3f} (presence {q['presence']:.2f}, shape {q['shape']:.2f}, "
                      f"motion {q['motion']:.2f}, smoothness {q['smoothness']:.2f}, sharpness "
                      f"{q['sharpness']:.2f}, background {q['background']:.2f}); measured "
                      f"{q['measured_shape']} moving {q['measured_direction']}: {q['prompt']!r}")
    return 0


# ---- bench ----------------------------------------------------------------------------------


def _configure_overhead(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=20, help="units per run (default: 20)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per unit (default: 4)")
    p.add_argument("--repeats", type=int, default=150,
                   help="interleaved repeats; more give a steadier minimum (default: 150)")
    p.add_argument("--no-trace", action="store_true", help="measure with the trace off")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _cmd_overhead(args: argparse.Namespace, hooks: Any) -> int:
    from accelframe.bench import overhead
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


# ---- parser ---------------------------------------------------------------------------------

Runner = Callable[[argparse.Namespace, Any], int]


def build_parser(hooks: Any) -> argparse.ArgumentParser:
    from accelframe import __version__

    parser = argparse.ArgumentParser(
        prog="accelframe", description="Stackable acceleration policies for autoregressive "
        "video diffusion: step (cache / predict / recompute), block (drafter + router) and "
        "stream (SLO batching) levels behind one scheduler API.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"accelframe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list loaded plugins, their hooks and registered names")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_plugins)

    p = sub.add_parser("generate", help="generate a video with an adapter and a policy stack",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _configure_generate(p)
    p.set_defaults(run=_cmd_generate)

    bench = sub.add_parser("bench", help="benchmarks (accelerated and baseline in one run)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench.set_defaults(run=lambda a, h: _missing(bench))
    p = bench_sub.add_parser("overhead", help="engine cost per model call against direct calls")
    _configure_overhead(p)
    p.set_defaults(run=_cmd_overhead)

    # subcommands from plugins
    groups = {None: sub, "bench": bench_sub}
    for entry in hooks.registry().of_kind("command"):
        target = groups.get(entry.group)
        if target is None:
            raise ConfigError(f"command {entry.name!r} of plugin {entry.plugin!r}", "group",
                              entry.group, "None or 'bench'")
        if entry.name in target.choices:
            raise ConfigError(f"command {entry.name!r} of plugin {entry.plugin!r}", "name",
                              entry.name, "a name no other command uses")
        p = target.add_parser(entry.name, help=entry.description)
        if entry.configure is not None:
            entry.configure(p)
        p.set_defaults(run=lambda a, h, fn=entry.factory: fn(a))
    return parser


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    from accelframe.plugins import create_hooks

    try:
        hooks = create_hooks()
        parser = build_parser(hooks)
        args = parser.parse_args(argv)
        if getattr(args, "run", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.run(args, hooks) or 0)
    except AccelframeError as exc:
        print(f"accelframe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
