"""``accelframe bench wan``: cost of the Wan-family adapters and KV-cache memory with a window.

For each family it generates the same request (tiny random weights by default) and reports wall
time per model call, per generated latent frame and per decoded pixel frame. Then it measures
the KV cache after a video and after one ``--long-factor`` times longer, with and without
Self-Forcing's local window: the window must keep memory flat (ratio 1), the global cache grows
with the video. Every model call is timed through the model-call wrapper hook (synchronised on CUDA). Everything
runs in one process; the JSON is what a script reads.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe.progress import write_above
from accelframe.plugins import hookimpl
from accelframe.types import Request

FAMILIES = ("self-forcing", "krea-realtime", "skyreels-v2-df")
PROMPT = "a red circle moves left on a blue background"


class CallTimer:
    """Times every model call through the ``accelframe_model_call`` wrapper hook. On CUDA it
    synchronises before and after the call, so each call's time is its own (kernels run
    asynchronously: without it a call's cost shows up wherever the next sync happens)."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.times: dict[str, list[float]] = {"denoise": [], "commit": []}

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @hookimpl(wrapper=True)
    def accelframe_model_call(self, call):
        self._sync()
        t0 = time.perf_counter()
        out = yield
        self._sync()
        self.times[call.kind].append(time.perf_counter() - t0)
        return out


def _family_kwargs(name: str, common: dict[str, Any]) -> dict[str, Any]:
    kw = dict(common)
    if name == "skyreels-v2-df":
        kw.update(num_inference_steps=4, ar_step=1, guidance_scale=1.0)  # few steps, one pass per call
    return kw


def _family_cost(name: str, common: dict[str, Any], frames: int, repeats: int, *,
                 hooks: Any = None) -> dict[str, Any]:
    """Wall time per model call and per frame of ``name`` on ``hooks`` (default:
    :func:`accelframe_bench.hooks.default_hooks`): a warm-up, then the best of ``repeats`` runs."""
    from accelframe_bench.hooks import or_default

    kw = _family_kwargs(name, common)
    hooks = or_default(hooks)
    pipe = Pipeline(name, hooks=hooks, adapter_kwargs=kw)
    pipe.generate(PROMPT, num_frames=frames)  # warm-up
    best: dict[str, Any] | None = None
    for _ in range(repeats):
        run = _timed_run(pipe, hooks, kw.get("device", "cpu"), frames)
        if best is None or run["wall_s"] < best["wall_s"]:
            best = run
    assert best is not None
    return best


def _timed_run(pipe: Pipeline, hooks: Any, device: str, frames: int) -> dict[str, Any]:
    """One generation of ``PROMPT``, timed. A model-call wrapper sees every call on its manager,
    so the call timer is registered for this run alone (other pipelines are not timed by it)."""
    timer = CallTimer(device)
    hooks.register(timer)
    try:
        t0 = time.perf_counter()
        res = pipe.generate(PROMPT, num_frames=frames)
        if timer.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    finally:
        hooks.unregister(timer)
    times = res.stats.to_dict()["time_s"]
    den, com = timer.times["denoise"], timer.times["commit"]
    return {
        "wall_s": wall,
        "model_calls": len(den),
        "commit_calls": len(com),
        "ms_per_model_call": 1000 * sum(den) / max(len(den), 1),
        "ms_per_commit": 1000 * sum(com) / max(len(com), 1),
        "ms_per_latent_frame": 1000 * wall / frames,
        "ms_per_latent_frame_without_decode": 1000 * (wall - times["decode"]) / frames,
        "ms_per_pixel_frame": 1000 * wall / res.frames.shape[1],
        "decode_share": times["decode"] / wall,
        "decode_s": times["decode"],
        "latent_frames": frames,
        "pixel_frames": int(res.frames.shape[1]),
    }


def compile_cost(name: str, common: dict[str, Any], frames: int, repeats: int, *,
                 hooks: Any = None) -> dict[str, Any]:
    """``compile=True`` against eager for family ``name``, in one process: both pipelines generate
    the same request once (the compiled one's first run compiles: ``first_run_s``), then
    ``repeats`` timed runs alternate between them and each keeps its best. Reports both runs, the
    speedups (whole video, per model call, decoding), the compile time and graphs, and the largest
    difference between the two videos' frames."""
    from accelframe_bench.hooks import or_default

    kw = _family_kwargs(name, common)
    hooks = or_default(hooks)
    device = kw.get("device", "cpu")
    pipes = {"eager": Pipeline(name, hooks=hooks, adapter_kwargs=kw),
             "compiled": Pipeline(name, hooks=hooks, adapter_kwargs={**kw, "compile": True})}
    first, out = {}, {}
    for label, pipe in pipes.items():
        t0 = time.perf_counter()
        out[label] = pipe.generate(PROMPT, num_frames=frames)
        first[label] = time.perf_counter() - t0
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for label, pipe in pipes.items():  # interleaved: a noisy spell slows both
            run = _timed_run(pipe, hooks, device, frames)
            if label not in best or run["wall_s"] < best[label]["wall_s"]:
                best[label] = run
    clock = pipes["compiled"].engine().target.compile_clock
    e, c = best["eager"], best["compiled"]
    return {
        "eager": e, "compiled": c,
        "speedup": e["wall_s"] / c["wall_s"],
        "model_call_speedup": e["ms_per_model_call"] / c["ms_per_model_call"],
        "decode_speedup": e["decode_s"] / c["decode_s"] if c["decode_s"] > 0 else None,
        "first_run_s": first, "compile_s": clock.seconds, "graphs": clock.compiles,
        "max_abs_diff": float((out["compiled"].frames - out["eager"].frames).abs().max()),
        "max_abs_diff_latents": float((out["compiled"].latents - out["eager"].latents).abs().max()),
    }


def _kv_bytes(hooks: Any, name: str, kw: dict[str, Any], frames: int) -> tuple[int, int]:
    pipe = Pipeline(name, hooks=hooks, adapter_kwargs=kw)
    eng = pipe.engine()
    eng.run(Request(prompts=("a red circle",), num_frames=frames, decode=False))
    kv = eng.target_state.kv
    return kv.nbytes(), len(kv)


def kv_memory(common: dict[str, Any], frames: int, factor: int, window: int, sinks: int, *,
              hooks: Any = None) -> dict[str, Any]:
    """KV-cache bytes after ``frames`` and ``frames * factor`` latent frames, per cache setting, on
    ``hooks`` (default: :func:`accelframe_bench.hooks.default_hooks`)."""
    from accelframe_bench.hooks import or_default

    hooks = or_default(hooks)
    out = {}
    configs = {
        "self-forcing (global)": ("self-forcing", {}),
        f"self-forcing (local_attn_size={window}, sink_size={sinks})":
            ("self-forcing", {"local_attn_size": window, "sink_size": sinks}),
        "krea-realtime (kv_cache_num_frames=3)": ("krea-realtime", {"num_denoising_steps": 2}),
    }
    for label, (name, extra) in configs.items():
        short, n_short = _kv_bytes(hooks, name, {**common, **extra}, frames)
        long, n_long = _kv_bytes(hooks, name, {**common, **extra}, frames * factor)
        out[label] = {"frames": [frames, frames * factor], "kv_bytes": [short, long],
                      "kv_frames": [n_short, n_long], "growth": long / short}
    return out


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe.validators import check_device
    from accelframe_bench.hooks import or_default

    frames = args.latent_frames
    if frames < 3 or frames % 3:
        raise ConfigError("bench wan", "--latent-frames", frames, "a multiple of 3 latent frames (the block size)")
    if args.long_factor < 2:
        raise ConfigError("bench wan", "long_factor", args.long_factor, "an integer >= 2")
    if args.repeats < 1:
        raise ConfigError("bench wan", "repeats", args.repeats, "an integer >= 1")
    check_device("bench wan", "--device", args.device)  # before any model is built
    common = {"height": args.height, "width": args.width, "device": args.device, "dtype": args.dtype,
              "size": args.size}
    # "frames" counts latent frames (the key predates --latent-frames)
    result: dict[str, Any] = {"config": {**common, "size": args.size, "frames": frames,
                                         "repeats": args.repeats, "torch": torch.__version__}}
    hooks = or_default(hooks)  # built after the checks: a refused option builds nothing
    result["families"] = {name: _family_cost(name, common, frames, args.repeats, hooks=hooks) for name in FAMILIES}
    result["kv_memory"] = kv_memory(common, frames, args.long_factor, args.window, args.sinks, hooks=hooks)
    if args.compile:
        result["compile"] = {}
        for i, name in enumerate(FAMILIES):
            write_above(f"bench wan: compile=True against eager, {name} ({i + 1}/{len(FAMILIES)}); "
                     "its first run compiles (about a minute per family on 2 CPU cores)")
            result["compile"][name] = compile_cost(name, common, frames, args.repeats, hooks=hooks)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, r in result["families"].items():
            print(f"{name:16s} {r['ms_per_model_call']:8.2f} ms/call  "
                  f"{r['ms_per_latent_frame']:8.2f} ms/latent frame "
                  f"({r['ms_per_latent_frame_without_decode']:.2f} without decode)  "
                  f"{r['ms_per_pixel_frame']:7.2f} ms/pixel frame")
        for label, r in result["kv_memory"].items():
            print(f"{label:45s} KV {r['kv_bytes'][0] / 2**20:8.3f} MiB at {r['frames'][0]} frames, "
                  f"{r['kv_bytes'][1] / 2**20:8.3f} MiB at {r['frames'][1]}  (x{r['growth']:.2f})")
        for name, r in result.get("compile", {}).items():
            print(f"{name:16s} compile=True: {r['speedup']:.2f}x per video, {r['model_call_speedup']:.2f}x per "
                  f"model call; compiled {r['graphs']} graphs in {r['compile_s']:.1f} s; "
                  f"frames differ by at most {r['max_abs_diff']:.1e}, latents {r['max_abs_diff_latents']:.1e}")
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    from accelframe.cli import add_latent_frame_options

    add_latent_frame_options(p, default=9, latent_help="latent frames per generation, a multiple of 3 (default: 9)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per family, best kept (default: 3)")
    p.add_argument("--long-factor", type=int, default=10,
                   help="the long video for KV memory is this many times longer (default: 10)")
    p.add_argument("--window", type=int, default=9, help="local_attn_size of the windowed run (default: 9)")
    p.add_argument("--sinks", type=int, default=3, help="sink_size of the windowed run (default: 3)")
    p.add_argument("--height", type=int, default=64, help="pixel height (default: 64)")
    p.add_argument("--width", type=int, default=64, help="pixel width (default: 64)")
    p.add_argument("--size", default="tiny", choices=("tiny", "1.3B", "14B"),
                   help="random-weight model size (default: tiny)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="network dtype (default: float32)")
    p.add_argument("--compile", action="store_true",
                   help="also run every family with compile=True beside eager (interleaved) and report the "
                        "speedups, the compile time and the largest frame difference")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


__all__ = ["compile_cost", "configure", "kv_memory", "run"]
