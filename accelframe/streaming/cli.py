"""``accelframe stream``: run live streams through StreamDiffusionV2's policies and write them.

Sources (``--source``): a registered stream source (``accelframe_register_sources``; the adapters
distribution registers ``world``, a clip of the embedded tiny world rendered from the prompt, played at
``--fps``, looped when ``--frames`` asks for more than one clip), a video file (read with PyAV, resized
to the model's frame size), or ``none`` (text-to-video: ``--frames`` output frames paced at ``--fps``).
``--streams N`` runs N user streams side by side (prompts and seeds differ per stream); without
``--prompt`` they take the source's own prompts (the ``world`` source's for ``none`` and video files).
The command runs on the CLI's plugin manager, so a third-party source, adapter or policy is seen here.

The pipeline: the ``self-forcing`` adapter with the world's models by default, and the policies
``slo-batch`` (chunk length and batch size), ``rolling-kv`` (sinks, refresh, RoPE reset) and, for
video-to-video, ``motion-noise``; ``--policy`` adds step and block policies after them (SCOPE,
TeaCache, ``sdvg`` with ``--drafter-size``), ``--stream-batch`` runs the denoising steps of consecutive
chunks as rows of batched forwards, with the step and block policies deciding row by row. The terminal shows live fps and time to first frame; the output goes to
``--out`` (an mp4 per stream) and ``--json`` prints the per-stream metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from accelframe import progress
from accelframe.errors import ConfigError
from accelframe.streaming.sinks import check_pattern

ADAPTER = "self-forcing"
WORLD_T_RESET = 24  # the world's models saw 27 latent frames: positions stay below that
# rolling-kv's sink refresh threshold for the command's streams: the paper says to set it large (the
# reference's default is 0.2); at 0.6 a 5-minute world stream drops the stale sinks that otherwise
# draw its shape back from about 160 s on (docs/streaming.md, Drift)
SINK_TAU = 0.6
DEFAULT_SOURCE = "world"  # --source's default, and whose prompts streams take without --prompt
NO_SOURCE = "none"  # text-to-video
PIXEL_FRAMES = 105  # --frames' default: one world clip (27 latent frames of the Wan VAE)


def source_choices(registry: Any) -> str:
    """What ``--source`` takes, for error messages: the registered sources, 'none' or a video file."""
    return ", ".join(repr(n) for n in [*registry.names("source"), NO_SOURCE]) + " or an existing video file"


def check_source(source: str, registry: Any) -> None:
    """A ConfigError unless ``source`` is 'none', a registered source or an existing file (before any
    model is loaded)."""
    if source != NO_SOURCE and source not in registry.names("source") and not Path(source).is_file():
        raise ConfigError("accelframe stream", "--source", source, source_choices(registry))


def stream_source(name: str, registry: Any) -> Any:
    """The registered stream source ``name`` (``accelframe_register_sources``), built."""
    return registry.get("source", name).factory()


def source_clip(source: Any, name: str, prompt: str, seed: int, frames: int) -> Any:
    """``source``'s input for one stream (its ``clip``); a prompt it cannot render is a ConfigError
    naming ``--prompt``."""
    try:
        return source.clip(prompt, seed, frames)
    except ConfigError as exc:
        if exc.field != "prompt":
            raise
        raise ConfigError("accelframe stream", "--prompt", prompt, f"{exc.allowed} for --source {name}") from None


def read_video(path: str, size: tuple[int, int], limit: int | None) -> Any:
    """The frames of a video file, ``[F, 3, H, W]`` in [0, 1] resized to ``size`` (area filter), decoded
    chunk by chunk as the stream consumes them (:class:`~accelframe.streaming.source.VideoFrames`)."""
    from accelframe.streaming.source import VideoFrames

    if not Path(path).is_file():
        raise ConfigError("accelframe stream", "--source", path, "an existing video file")
    try:
        return VideoFrames(path, size, limit)
    except ConfigError as exc:
        raise ConfigError("accelframe stream", "--source", path, exc.allowed) from None


def build_pipeline(*, size: str = "world", hooks_: Any = None, adapter: Any = None,
                   max_streams: int = 8, max_chunk_units: int = 4, rolling: bool = True, motion: bool = True,
                   window: int = 6, sinks: int = 3, t_reset: int | None = WORLD_T_RESET,
                   block_frames: int = 3, trace: bool = False, drafter_size: str | None = None,
                   policies: Any = (), tau: float | None = None) -> Any:
    """The StreamDiffusionV2 pipeline on ``adapter`` (default: self-forcing with ``size`` and
    ``block_frames`` latent frames per unit), on the plugin manager ``hooks_`` (the command passes the
    CLI's; default: :func:`accelframe.plugins.create_hooks`, the autoloading manager). A
    ``drafter_size`` adds a self-forcing drafter of that size; ``policies`` (``(name, kwargs)``
    pairs) are used after the stream policies. ``tau``: rolling-kv's sink refresh threshold (None:
    :data:`SINK_TAU`)."""
    from accelframe.pipeline import Pipeline
    from accelframe.plugins import create_hooks

    kwargs = {"size": size, "num_frame_per_block": block_frames}
    drafter = {} if drafter_size is None else {
        "drafter": ADAPTER, "drafter_kwargs": {"size": drafter_size, "num_frame_per_block": block_frames}}
    pipe = Pipeline(adapter if adapter is not None else ADAPTER,
                    hooks=hooks_ if hooks_ is not None else create_hooks(), trace=trace,
                    adapter_kwargs=None if adapter is not None else kwargs, **drafter)
    pipe.use("slo-batch", max_streams=max_streams, max_chunk_units=max_chunk_units)
    if rolling:
        pipe.use("rolling-kv", window=window, sinks=sinks, t_reset=t_reset,
                 tau=SINK_TAU if tau is None else tau)
    if motion:
        pipe.use("motion-noise")
    for name, kw in policies:
        pipe.use(name, **kw)
    return pipe


def command_pipeline(args: argparse.Namespace, hooks: Any, *, max_streams: int, motion: bool) -> Any:
    """The pipeline of ``accelframe stream`` or ``serve``: the stack file's (``args.stack_config``,
    :func:`resolve_stack`) or the default one from the options, with ``--policy`` entries after it."""
    if args.stack_config is None:
        return build_pipeline(size=args.size, hooks_=hooks, max_streams=max_streams, block_frames=args.block_frames,
                              max_chunk_units=args.max_chunk_units, rolling=not args.no_rolling, motion=motion,
                              drafter_size=args.drafter_size, policies=args.policies,
                              tau=getattr(args, "sink_tau", None))
    from accelframe.pipeline import Pipeline

    pipe = Pipeline.from_config(args.stack_config, hooks=hooks, trace=False)
    for name, kw in args.policies:
        pipe.use(name, **kw)
    return pipe


def longest_chunk_units(pipe: Any, given: int | None) -> int:
    """The longest chunk the pipeline's batch policy plans, in units: ``given`` (the command's
    ``--max-chunk-units``), else the stack's ``max_chunk_units`` setting, else its default 4."""
    if given is not None:
        return given
    found = [p.settings["max_chunk_units"] for p in pipe.stack if p.settings and "max_chunk_units" in p.settings]
    return max(found, default=PIPELINE_OPTIONS["max_chunk_units"])


def default_prompts(source: Any, registry: Any, n: int, seed: int) -> list[str]:
    """Prompts of ``n`` streams started without ``--prompt``: the source's own, else (text-to-video,
    a video file) the default source's."""
    if source is None or not callable(getattr(source, "prompts", None)):
        if DEFAULT_SOURCE not in registry.names("source"):
            raise ConfigError("accelframe stream", "--prompt", None,
                              f"a prompt: no registered source {DEFAULT_SOURCE!r} gives default prompts")
        source = stream_source(DEFAULT_SOURCE, registry)
    return list(source.prompts(n, seed))


def make_sources(args: argparse.Namespace, pipe: Any) -> list[Any]:
    """The streams of ``args``; a registered source is looked up on the pipeline's plugin manager."""
    from accelframe.streaming.source import StreamSource

    registry = pipe.registry
    source = None
    if args.source != NO_SOURCE and args.source in registry.names("source"):
        source = stream_source(args.source, registry)
    prompts = [args.prompt] * args.streams if args.prompt else default_prompts(source, registry, args.streams,
                                                                                args.seed)
    out = []
    for i, prompt in enumerate(prompts):
        seed = args.seed + i
        common = dict(id=f"s{i}", prompt=prompt, fps=args.fps, deadline_s=args.deadline, seed=seed,
                      stall_timeout_s=args.stall_timeout)
        if args.source == NO_SOURCE:
            out.append(StreamSource(num_frames=args.frames, **common))
        elif source is not None:
            out.append(StreamSource(frames=source_clip(source, args.source, prompt, seed, args.frames), **common))
        else:
            out.append(StreamSource(frames=read_video(args.source, pipe.adapter.pixel_size, args.frames), **common))
    return out


class LiveLine:
    """One terminal line per stream run: frames out, live output fps and time to first frame."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet or not sys.stderr.isatty()
        self.frames = 0
        self.first_emit: float | None = None

    def __call__(self, record: dict[str, Any], now: float, ttff: float | None) -> None:
        n = sum(record.get("emitted", {}).values())
        self.frames += n
        if n and self.first_emit is None:
            self.first_emit = now
        if self.quiet:
            return
        span = now - (self.first_emit or now)
        fps = f"{(self.frames - n) / span:5.1f}" if span > 0 else "  -  "
        first = f"{ttff:.2f} s" if ttff is not None else "-"
        # the shared status line: a warning printed meanwhile goes above it, never inside it
        progress.status(f"{self.frames:6d} frames out | {fps} fps | first frame after {first}")

    def done(self) -> None:
        progress.end_status()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=DEFAULT_SOURCE, help="'world' (a rendered world clip), 'none' "
                                                            "(text-to-video) or a video file (default: world)")
    p.add_argument("--prompt", default=None, help="the prompt (default: held-out world prompts, one per stream)")
    p.add_argument("--streams", type=int, default=1, help="user streams run side by side (default: 1)")
    from accelframe.cli import add_frame_options

    # --latent-frames is converted by the adapter's own frame mapping once it is built (see run)
    add_frame_options(p, default=PIXEL_FRAMES,
                      pixel_help="input (or, for 'none', output) pixel frames per stream (default: 105, "
                                 "one world clip)",
                      latent_help="the same counted in latent frames: N latent frames are 1 + 4 (N - 1) "
                                  "pixel frames (27 -> 105)")
    p.add_argument("--fps", type=float, default=None, help="frames per second the source delivers (default: 16)")
    p.add_argument("--deadline", type=float, default=None, help="per-frame deadline in seconds from arrival "
                                                              "to output (default: 1.0)")
    p.add_argument("--stall-timeout", type=float, default=2.0,
                   help="end a stream whose source is silent this long, in seconds (default: 2)")
    p.add_argument("--stack", default=None, metavar="FILE",
                   help="a stack file (TOML; docs/stacking.md): its adapter, drafter and policies are the pipeline, "
                        "instead of the options that build one (--size, --block-frames, --drafter-size, --max-streams, "
                        "--max-chunk-units, --no-rolling, --no-motion-noise); its [stream] table gives --stream-batch, "
                        "--fps and --deadline unless they are given; --policy adds policies after its stack")
    p.add_argument("--size", default=None, help="model size of the adapter (default: world)")
    p.add_argument("--block-frames", type=int, default=None,
                   help="latent frames per unit (default: 3, the block the world's models were trained on; "
                        "1 is the low-latency mode: a first frame after one pixel frame, smoother motion lost)")
    p.add_argument("--stream-batch", action="store_true",
                   help="run the denoising steps of consecutive chunks as one batched forward")
    p.add_argument("--ranks", type=int, default=1, metavar="R",
                   help="pipeline parallelism: the DiT's blocks over R processes in a ring (with --stream-batch; "
                        "this process is rank 0 and starts the others, or run under torchrun --nproc-per-node R; "
                        "default: 1)")
    p.add_argument("--partition", default=None, metavar="B0,B1,...",
                   help="with --ranks: rank r runs DiT blocks [B_r, B_r+1) (default: even; rank 0 also decodes, "
                        "so it may take fewer)")
    p.add_argument("--policy", action="append", default=[], metavar="NAME[:K=V,...]",
                   help="a step or block policy used after the stream policies, repeatable, in order "
                        "(e.g. scope, teacache:threshold=0.1, sdvg:tau=-1.1 with --drafter-size)")
    p.add_argument("--drafter-size", default=None, metavar="SIZE",
                   help="a self-forcing drafter of this size for block policies (the world's: world-drafter)")
    p.add_argument("--max-streams", type=int, default=None, help="most streams in one batch (default: 8)")
    p.add_argument("--max-chunk-units", type=int, default=None, help="longest chunk, in units (default: 4)")
    p.add_argument("--no-rolling", action="store_true", help="keep every frame in the KV cache (no rolling-kv)")
    p.add_argument("--sink-tau", type=float, default=None, metavar="T",
                   help="rolling-kv's sink refresh threshold in [-1, 1]: a sink less similar than T to the newest "
                        f"chunk is replaced by one of its frames (default: {SINK_TAU:g}; the paper says to set it "
                        "large, the reference's code has 0.2; -1 never refreshes)")
    p.add_argument("--no-motion-noise", action="store_true", help="noise every chunk to --sigma instead")
    p.add_argument("--sigma", type=float, default=0.7, help="noise level without motion-noise (default: 0.7)")
    p.add_argument("--on-corrupt", default="hold", choices=("hold", "error"),
                   help="a corrupt input frame: hold the last good one (default) or fail")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    p.add_argument("--out", default="stream.mp4", metavar="PATH",
                   help="output mp4 (default: stream.mp4); with several streams each gets its own file: "
                        "-ID before the suffix (stream-s0.mp4, stream-s1.mp4, ...), or where {stream} "
                        "stands in PATH, the one placeholder allowed")
    p.add_argument("--upscale", type=int, default=4, help="enlarge frames in the mp4 by this factor (default: 4)")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="replace output files that exist (--overwrite: the same)")
    p.add_argument("--json", action="store_true", help="print the per-stream metrics as JSON")


# options that build the pipeline, and their defaults: a stack file builds it instead
PIPELINE_OPTIONS = {"size": "world", "block_frames": 3, "max_streams": 8, "max_chunk_units": 4}
STACK_CONFLICTS = (("size", "--size", "[adapter] settings"), ("block_frames", "--block-frames", "[adapter] settings"),
                   ("drafter_size", "--drafter-size", "[drafter]"), ("max_streams", "--max-streams", "slo-batch settings"),
                   ("max_chunk_units", "--max-chunk-units", "slo-batch settings"),
                   ("no_rolling", "--no-rolling", "rolling-kv entry"),
                   ("sink_tau", "--sink-tau", "rolling-kv entry"),
                   ("no_motion_noise", "--no-motion-noise", "motion-noise entry"))
RUN_DEFAULTS = {"fps": 16.0, "deadline": 1.0}  # what a stack file's [stream] table may set instead


def resolve_stack(args: argparse.Namespace, owner: str, conflicts: Any = STACK_CONFLICTS,
                  defaults: dict[str, Any] = RUN_DEFAULTS) -> None:
    """Fill ``args`` in for ``--stack FILE`` (``args.stack_config``, None without one): the options
    in ``conflicts`` are refused beside it (ConfigError naming the flag), and ``--fps``, ``--deadline``
    and ``--stream-batch`` come from its ``[stream]`` table unless given, else from ``defaults``;
    without a file the pipeline options take their defaults (:data:`PIPELINE_OPTIONS`)."""
    from accelframe.cli import stack_config

    args.stack_config = stack_config(args, owner, conflicts) if getattr(args, "stack", None) else None
    opts = args.stack_config.stream if args.stack_config is not None else None
    if opts is not None:
        args.stream_batch = args.stream_batch or opts.stream_batch
    for dest, default in defaults.items():
        if getattr(args, dest) is None:
            from_file = getattr(opts, "deadline_s" if dest == "deadline" else dest, None) if opts else None
            setattr(args, dest, from_file if from_file is not None else default)
    if args.stack_config is None:
        for dest, default in PIPELINE_OPTIONS.items():
            if hasattr(args, dest) and getattr(args, dest) is None:
                setattr(args, dest, default)


def check_sink_tau(owner: str, args: argparse.Namespace) -> None:
    """``--sink-tau``: a cosine threshold in [-1, 1], and only where rolling-kv runs."""
    tau = getattr(args, "sink_tau", None)
    if tau is None:
        return
    if not -1.0 <= tau <= 1.0:
        raise ConfigError(owner, "--sink-tau", tau, "a cosine threshold in [-1, 1] (-1 never refreshes)")
    if getattr(args, "no_rolling", False):
        raise ConfigError(owner, "--sink-tau", tau, "nothing with --no-rolling (no rolling-kv runs)")


def check_args(args: argparse.Namespace) -> None:
    """Typed errors for bad input, before any model is loaded."""
    resolve_stack(args, "accelframe stream")
    for name, lo in (("streams", 1), ("frames", 1), ("max_streams", 1), ("max_chunk_units", 1), ("upscale", 1),
                     ("block_frames", 1), ("ranks", 1)):
        value = getattr(args, name)
        if value is None and args.stack_config is not None:  # the file builds the pipeline
            continue
        if not isinstance(value, int) or value < lo:
            raise ConfigError("accelframe stream", "--" + name.replace("_", "-"), value, f"an int >= {lo}")
    if args.latent_frames is not None and args.latent_frames < 1:
        raise ConfigError("accelframe stream", "--latent-frames", args.latent_frames, "an int >= 1")
    for name in ("fps", "deadline", "stall_timeout"):
        value = getattr(args, name)
        if not value > 0 or value == float("inf"):
            raise ConfigError("accelframe stream", "--" + name.replace("_", "-"), value, "a positive number")
    if not 0 < args.sigma <= 1:
        raise ConfigError("accelframe stream", "--sigma", args.sigma, "a noise level in (0, 1]")
    check_sink_tau("accelframe stream", args)
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError("accelframe stream", "--prompt", args.prompt,
                          "a non-empty prompt, or no --prompt for the held-out world prompts")
    check_pattern("accelframe stream", "--out", args.out)
    if args.ranks > 1 and not args.stream_batch:
        raise ConfigError("accelframe stream", "--ranks", args.ranks,
                          "1 without --stream-batch (the ring runs the stream batch's lanes)")
    args.bounds = None
    if args.partition is not None:
        try:
            args.bounds = tuple(int(x) for x in args.partition.split(","))
        except ValueError:
            raise ConfigError("accelframe stream", "--partition", args.partition,
                              "comma-separated ints, e.g. 0,2,4 for two ranks of a 4-block DiT") from None
    from accelframe.cli import parse_policy

    args.policies = [parse_policy(spec) for spec in args.policy]


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    """``accelframe stream`` on ``hooks``, the CLI's plugin manager (default: the autoloading one)."""
    from accelframe.cli import frame_counts
    from accelframe.outputs import check_output, sigterm_as_interrupt
    from accelframe.limits import check_upscale
    from accelframe.plugins import create_hooks
    from accelframe.streaming.sinks import Mp4Sink, stream_pattern
    from accelframe.streaming.source import FrameMap, RealClock

    check_args(args)
    hooks = hooks if hooks is not None else create_hooks()
    check_source(args.source, hooks.registry())
    for name, _ in args.policies:  # before any model is loaded: a typed error naming the policy
        hooks.registry().get("policy", name)
    sink = Mp4Sink(stream_pattern(args.out, args.streams), args.fps, force=args.force,
                   upscale_factor=args.upscale)
    for i in range(args.streams):  # before any model is loaded: the ids make_sources gives
        check_output(sink.path_for(f"s{i}"), owner="accelframe stream", field="--out", force=args.force,
                     suffixes=(".mp4",))
    pipe = command_pipeline(args, hooks, max_streams=args.max_streams,
                            motion=args.source != NO_SOURCE and not args.no_motion_noise)
    if args.latent_frames is not None:  # the adapter's VAE says how many pixel frames that many latents make
        _, args.frames = frame_counts(pipe.adapter, frames=None, latent_frames=args.latent_frames,
                                      default_latent=args.latent_frames, owner="accelframe stream")
    sources = make_sources(args, pipe)
    sink.check([s.id for s in sources])
    # the largest chunk the sink upscales at once: the longest chunk of units, in pixel frames
    chunk = longest_chunk_units(pipe, args.max_chunk_units) * pipe.adapter.unit_frames * FrameMap.of(pipe.adapter).ratio
    check_upscale("accelframe stream", "--upscale", args.upscale, tuple(pipe.adapter.pixel_size),
                  frames=min(chunk, args.frames))
    clock = RealClock()
    live = LiveLine(args.json)
    first: dict[str, float] = {}

    def on_frames(stream: str, frames: torch.Tensor) -> None:
        first.setdefault(stream, clock.now())

    def on_batch(record: dict[str, Any]) -> None:
        ttff = min(first.values()) if first else None
        live(record, clock.now(), ttff)

    from accelframe.streaming.ranks import launched, reap, spawn_peers

    peers = []
    if args.ranks > 1 and not launched():  # this process is rank 0; its peers run this same command
        peers = spawn_peers(["-m", "accelframe", *sys.argv[1:]], args.ranks)
    interrupted = False
    try:
        with sigterm_as_interrupt():  # SIGTERM as Ctrl-C: the sink flushes what was emitted
            result = pipe.stream(sources, clock=clock, default_sigma=args.sigma, sinks=[sink],
                                 on_frames=on_frames, stream_batch=args.stream_batch, keep_frames=False,
                                 on_corrupt=args.on_corrupt, on_batch=on_batch, ranks=args.ranks,
                                 partition=args.bounds)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if peers:
            reap(peers)
        if args.ranks == 1 or os.environ.get("RANK", "0") == "0":
            live.done()
        for sid, path in sink.paths.items() if interrupted else ():
            if path.exists():
                print(f"accelframe stream: interrupted; kept {sink.frames[sid]} frames of {sid} in {path}",
                      file=sys.stderr)
    if result is None:  # a rank > 0 of a ring: rank 0 reports
        return 0
    doc = result.to_json()
    summary = {"streams": doc["streams"], "outputs": {k: str(v) for k, v in sink.paths.items()},
               "batches": len(doc["batches"]), "stream_batch": args.stream_batch, "ranks": args.ranks,
               "calls": doc["stats"]["calls"], "blocks": doc["stats"]["blocks"]}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for sid, m in doc["streams"].items():
        fps = "-" if m["fps"] is None else f"{m['fps']:.1f}"
        ttff = "-" if m["ttff_s"] is None else f"{m['ttff_s']:.2f} s"
        print(f"{sid}: {m['frames']} frames, {fps} fps, first frame after {ttff}, jitter {m['jitter_ms']:.0f} ms, "
              f"{100 * m['deadline_miss_rate']:.1f} % deadlines missed, {m['corrupt_frames']} corrupt; "
              f"{m['ended']} -> {sink.paths.get(sid, '(nothing written)')}")
    return 0


__all__ = ["build_pipeline", "check_sink_tau", "check_source", "configure", "default_prompts", "make_sources",
           "read_video", "run", "source_choices", "source_clip", "stream_source"]
