"""``accelframe bench step``: step policies against the original on the tiny world, in one process.

SCOPE's protocol (its Table 1 and 2) on held-out prompts of the embedded world: every method
generates the same prompts with the same seeds and settings as the original, interleaved prompt by
prompt so that machine noise falls on all of them alike. Per method:

- ``speedup``: the original's denoising wall time over the method's (``pipe.generate`` with
  ``decode=False``; the VAE decode is the same for every method and is timed apart);
- ``nfe_ratio``: the original's computed model calls over the method's; ``frames_ratio`` the same
  for latent frames forwarded (selective computation lowers it, not the call count);
- ``flops`` (estimated from the trace with the adapter's ``call_flops``) and ``flops_speedup``;
- ``psnr`` / ``ssim`` of the decoded clips against the original's (mean over clips; an exact
  match is ``null`` PSNR, shown as "inf");
- ``quality``: the world's analytic quality of the decoded clips, and ``adherence``;
- ``policy_share``: the fraction of the method's denoising time spent in its policies' hooks (the
  adapter's probe, which they call, included);
- ``memory_mb``: the most velocity history its policies held (SCOPE's added memory; on a GPU also
  the peak allocated memory of the run, ``cuda_peak_mb``);
- ``projected_speedup`` (issue 23 item 6): the original's work over the method's, counted from the
  runs' statistics (computed model calls and commit passes; no decode, as the speedup has none) and
  priced with the cost table of ``--project`` (:func:`accelframe_bench.costs.price`), labelled
  ``projected_at``: by default the adapter's real configuration (:data:`PROJECTS`: SkyReels-V2 14B
  at 540P, Self-Forcing 1.3B at 832x480, MAGI-1 4.5B); ``none``: no projection. A cached or
  predicted call costs nothing there, and a call is priced whole: selective computation (fewer
  frames a call, the ``frames_ratio``) and the policies' own time (``policy_share``) are not priced.

Written to ``--out``: ``results.json``, ``results.md`` (the table), ``pareto.png`` (speedup
against PSNR), ``timeline.png`` (SCOPE's decisions per model call, like the paper's Figure 6),
``length.png`` (denoising time of the original and SCOPE against video length, Figure 8) and
``memory.png`` (Figure 9's comparison, here the policies' added memory).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from accelframe.errors import ConfigError
from accelframe.metrics import psnr, ssim
from accelframe.progress import progress_bar
from accelframe_bench.costs import PROJECT_HELP, CostTable, Counts

ADAPTERS = ("skyreels-v2-df", "self-forcing", "magi-1")
# the configuration a family's rows are projected at by default: the papers' model of that loop
# (the self-forcing loop is Self-Forcing's own 1.3B; Krea's 14B is the block bench's target)
PROJECTS = {"skyreels-v2-df": "skyreels-v2-14B@540P", "self-forcing": "self-forcing-1.3B@832x480",
            "magi-1": "magi-1-4.5B"}
# a method's TeaCache coefficients to be fitted by ``accelframe calibrate`` on training prompts
CALIBRATED = "calibrated"


@attrs.frozen(kw_only=True)
class Method:
    """One row of the table: a stack of step policies, or changed adapter settings."""

    name: str
    policies: tuple[tuple[str, dict[str, Any]], ...] = ()
    adapter_kwargs: dict[str, Any] = attrs.field(factory=dict)
    group: str = ""


@attrs.frozen(kw_only=True)
class Setup:
    """The original configuration of an adapter and the methods compared against it."""

    adapter_kwargs: dict[str, Any]
    frames: int  # latent frames per clip
    preset: str  # SCOPE's preset for the family
    sensitivity: tuple[tuple[float, float], ...]
    reduced_steps: int
    scope_extra: dict[str, Any] = attrs.field(factory=dict)
    quick_frames: int = 9  # latent frames per clip with --quick
    lengths: tuple[int, ...] = (9, 18, 27)  # clip lengths of the length-scaling rows
    quick_lengths: tuple[int, ...] = (3, 9)
    warmup_frames: int | None = None  # the warm-up generation (default: one unit)


def setup(adapter: str) -> Setup:
    from accelframe_policies.scope import SENSITIVITY

    if adapter == "skyreels-v2-df":  # SCOPE's SkyReels-V2 setting: 50 steps, asynchronous (ar_step 5)
        return Setup(adapter_kwargs={"num_inference_steps": 50, "ar_step": 5}, frames=27,
                     preset="skyreels-v2", sensitivity=SENSITIVITY["skyreels-v2"], reduced_steps=10)
    if adapter == "self-forcing":  # a chunk-synchronised loop: MAGI-1's setting, no selective computation
        return Setup(adapter_kwargs={}, frames=27, preset="magi-1", sensitivity=SENSITIVITY["magi-1"],
                     reduced_steps=2)
    if adapter == "magi-1":  # SCOPE's MAGI-1 setting: 64 steps, staged window of 4 chunks (24 latent frames)
        # a window of 4 chunks needs 24 latent frames, all the world's MAGI model was trained on
        return Setup(adapter_kwargs={}, frames=24, preset="magi-1", sensitivity=SENSITIVITY["magi-1"],
                     reduced_steps=16, quick_frames=24, lengths=(24,), quick_lengths=(24,), warmup_frames=24)
    raise ConfigError("bench step", "adapter", adapter, "one of " + ", ".join(ADAPTERS))


def methods(adapter: str, quick: bool = False) -> list[Method]:
    """The methods of the table for ``adapter`` (``quick``: one setting per technique)."""
    from accelframe_policies.reduced_steps import reduced_step_kwargs
    from accelframe_policies.scope import PRESETS

    s = setup(adapter)
    paper = (PRESETS[s.preset]["tau_c"], PRESETS[s.preset]["tau_p"])
    scope = ("scope", {"preset": s.preset})
    out = [Method(name=f"SCOPE {s.preset}", policies=(scope,), group="scope")]
    sync = adapter in ("self-forcing", "magi-1")  # chunk-synchronised: no selective computation
    flow_warmup = 1 if adapter == "self-forcing" else 5  # FlowCache: warm-up 5 (its MAGI-1 default)
    reduced = Method(name=f"original {s.reduced_steps} steps", group="reduced",
                     adapter_kwargs=reduced_step_kwargs(adapter, s.reduced_steps, s.adapter_kwargs))
    if quick:
        return out + [
            Method(name="TeaCache", policies=(("teacache", {"threshold": 0.08}),), group="teacache"),
            Method(name="TaylorSeer N=5", policies=(("taylorseer", {"interval": 5}),), group="taylorseer"),
            Method(name="reuse-only 0.05", policies=(("first-block-cache", {"threshold": 0.05}),), group="reuse"),
            Method(name="FlowCache", policies=(("flowcache", {"threshold": 0.3, "warmup": flow_warmup}),),
                   group="flowcache"),
            reduced,
        ]
    for tc, tp in s.sensitivity:
        if (tc, tp) != paper:
            out.append(Method(name=f"SCOPE ({tc:g}, {tp:g})",
                              policies=(("scope", {"preset": s.preset, "tau_c": tc, "tau_p": tp}),),
                              group="scope-sensitivity"))
    if not sync:
        out.append(Method(name="SCOPE no selective", group="scope-ablation",
                          policies=(("scope", {"preset": s.preset, "selective": False}),)))
    for pred in ("taylor1", "momentum", "auto"):
        out.append(Method(name=f"SCOPE {pred}", group="scope-predictor",
                          policies=(("scope", {"preset": s.preset, "predictor": pred}),)))
    for h in (3, 8):
        out.append(Method(name=f"SCOPE H={h}", group="scope-horizon",
                          policies=(("scope", {"preset": s.preset, "max_skip": h}),)))
    out += [
        Method(name="TeaCache slow", policies=(("teacache", {"threshold": 0.05}),), group="teacache"),
        Method(name="TeaCache fast", policies=(("teacache", {"threshold": 0.08}),), group="teacache"),
        Method(name="TeaCache calibrated slow", group="teacache",
               policies=(("teacache", {"threshold": 0.1, "coefficients": CALIBRATED}),)),
        Method(name="TeaCache calibrated fast", group="teacache",
               policies=(("teacache", {"threshold": 0.2, "coefficients": CALIBRATED}),)),
        Method(name="TaylorSeer slow", policies=(("taylorseer", {"interval": 3}),), group="taylorseer"),
        Method(name="TaylorSeer fast", policies=(("taylorseer", {"interval": 5}),), group="taylorseer"),
        Method(name="reuse-only slow", policies=(("first-block-cache", {"threshold": 0.05}),), group="reuse"),
        Method(name="reuse-only fast", policies=(("first-block-cache", {"threshold": 0.1}),), group="reuse"),
        Method(name="FlowCache slow", policies=(("flowcache", {"threshold": 0.3, "warmup": flow_warmup}),),
               group="flowcache"),
        Method(name="FlowCache fast", policies=(("flowcache", {"threshold": 0.8, "warmup": flow_warmup}),),
               group="flowcache"),
        reduced,
    ]
    return out


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------


def _pipe(hooks: Any, adapter: str, kwargs: dict[str, Any], method: Method | None,
          coefficients: list[float] | None = None) -> Any:
    from accelframe.pipeline import Pipeline

    pipe = Pipeline(adapter, hooks=hooks, adapter_kwargs={"size": "world", **kwargs,
                                                          **(method.adapter_kwargs if method else {})})
    for name, kw in (method.policies if method else ()):
        if kw.get("coefficients") == CALIBRATED:
            kw = {**kw, "coefficients": coefficients}
        pipe.use(name, **kw)
    return pipe


def _calibrated(hooks: Any, adapter: str, kwargs: dict[str, Any], frames: int, seed: int) -> dict[str, Any]:
    """TeaCache's polynomial fitted on 2 training prompts of the world (``accelframe calibrate``)."""
    from accelframe_adapters.world import clips
    from accelframe_bench.calibrate import calibrate

    prompts = [s.prompt for s in clips.sample_scenes(2, 3_000 + seed, split="train")]
    return calibrate(_pipe(hooks, adapter, kwargs, None), prompts, num_frames=frames, seed=seed)


@attrs.define
class _Tally:
    wall: list[float] = attrs.field(factory=list)
    policy_s: float = 0.0
    calls: dict[str, int] = attrs.field(factory=lambda: {"computed": 0, "cached": 0, "predicted": 0,
                                                        "frames_computed": 0})
    flops: float = 0.0
    psnr: list[float] = attrs.field(factory=list)
    ssim: list[float] = attrs.field(factory=list)
    frames: list[torch.Tensor] = attrs.field(factory=list)
    memory: int = 0
    cuda_peak: int = 0
    modes: list[str] = attrs.field(factory=list)
    work: Counts = attrs.field(factory=Counts)  # summed over the prompts, for pricing


def _flops(adapter: Any, events: list[dict[str, Any]]) -> float:
    total = 0.0
    for e in events:
        if e["event"] == "step" and e["model"] == "target" and e["mode"] == "recompute":
            total += adapter.call_flops("denoise", tuple(e["interval"] or e["frames"]))
        elif e["event"] == "commit" and e.get("model") == "target":
            total += adapter.call_flops("commit", tuple(e["frames"]))
    return total


def _generate(pipe: Any, prompt: str, frames: int, seed: int) -> tuple[Any, float, int]:
    cuda = getattr(pipe.adapter, "device", torch.device("cpu"))
    on_gpu = isinstance(cuda, torch.device) and cuda.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = pipe.generate([prompt], num_frames=frames, seed=seed, decode=False)
    if on_gpu:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return res, wall, (torch.cuda.max_memory_allocated() if on_gpu else 0)


@torch.no_grad()
def _decode(pipe: Any, latents: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Decode clips ``[M, F, C, H, W]`` with the world VAE in batches: ``[M, T, 3, H, W]`` in [0, 1]."""
    vae, out = pipe.adapter.vae, []
    for i in range(0, latents.shape[0], batch):
        z = latents[i:i + batch].permute(0, 2, 1, 3, 4).to(pipe.adapter.device)  # [B, C, F, H, W]
        video = vae.decode(z)  # [B, 3, T, H, W]
        out.append(((video.permute(0, 2, 1, 3, 4) + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
    return torch.cat(out)


def run_bench(*, adapter: str, n: int, seed: int = 0, quick: bool = False, only: list[str] | None = None,
              lengths: tuple[int, ...] | None = None, quiet: bool = False, hooks: Any = None,
              table: CostTable | None = None) -> dict[str, Any]:
    """The table's document. ``hooks``: the plugin manager every pipeline runs on (default:
    :func:`accelframe_bench.hooks.default_hooks`); ``table``: the cost table each method's work is
    priced with (None: no projection)."""
    from accelframe_adapters.world import clips, quality
    from accelframe_bench.hooks import or_default
    from accelframe_bench.costs import projected_speedup, work

    s = setup(adapter)
    if n < 1:
        raise ConfigError("bench step", "prompts", n, "an int >= 1")
    frames = s.quick_frames if quick else s.frames
    all_methods = methods(adapter, quick)
    if only:
        known = [m.name for m in all_methods]
        bad = [o for o in only if o not in known]
        if bad:
            raise ConfigError("bench step", "only", bad[0], "method names among " + ", ".join(known))
        all_methods = [m for m in all_methods if m.name in only or m.group == "scope"]
    if lengths is None:
        lengths = s.quick_lengths if quick else s.lengths
    hooks = or_default(hooks)
    scenes = clips.sample_scenes(n, 7_000 + seed, split="eval")
    rng = random.Random(seed)
    seeds = [rng.randrange(2**31) for _ in scenes]
    orig = _pipe(hooks, adapter, s.adapter_kwargs, None)
    cal = None
    if any(kw.get("coefficients") == CALIBRATED for m in all_methods for _, kw in m.policies):
        cal = _calibrated(hooks, adapter, s.adapter_kwargs, frames, seed)
    pipes = [_pipe(hooks, adapter, s.adapter_kwargs, m, cal and cal["coefficients"]) for m in all_methods]
    try:  # the pipelines' policies leave the manager (a caller's, the CLI's) when the runs end
        tallies = {"original": _Tally(), **{m.name: _Tally() for m in all_methods}}
        unit = orig.adapter.unit_frames
        steps_total = n * (1 + len(all_methods)) + 2 * len(lengths)
        with progress_bar(total=steps_total, desc=f"bench step {adapter}", unit="run", quiet=quiet) as bar:
            for p in [orig, *pipes]:  # warm-up: one unit each
                p.generate([scenes[0].prompt], num_frames=s.warmup_frames or unit, seed=0, decode=False)
            named = [("original", orig), *((m.name, p) for m, p in zip(all_methods, pipes))]
            for i, (scene, sd) in enumerate(zip(scenes, seeds)):
                latents = []
                for name, pipe in named:
                    res, wall, peak = _generate(pipe, scene.prompt, frames, sd)
                    t = tallies[name]
                    st = res.stats.to_dict()
                    t.wall.append(wall)
                    t.policy_s += st["time_s"]["policy"]  # the probe runs inside the policies' hooks
                    for k in t.calls:
                        t.calls[k] += st["calls"]["target"][k]
                    t.work += work(st, pipe.adapter, decoded=False)  # timed without decoding
                    events = res.trace.events
                    t.flops += _flops(pipe.adapter, events)
                    t.cuda_peak = max(t.cuda_peak, peak)
                    t.memory = max([t.memory] + [getattr(sp.policy, "memory_bytes", lambda: 0)()
                                                 for sp in pipe.stack])
                    if i == 0:
                        t.modes = [e["mode"] for e in events if e["event"] == "step" and e["model"] == "target"]
                    latents.append(res.latents)
                    bar.update(1)
                pixels = _decode(orig, torch.cat(latents))  # one batched decode: [M, T, 3, H, W]
                for (name, _), pix in zip(named, pixels):
                    t = tallies[name]
                    t.frames.append(pix)
                    if name != "original":
                        t.psnr.append(psnr(pix, pixels[0]))
                        t.ssim.append(ssim(pix, pixels[0]))
            length_rows = _length_scaling(orig, pipes[0], scenes[0], seeds[0], lengths, bar)
    finally:
        for p in (orig, *pipes):
            p.close()
    out = []
    base = tallies["original"]
    q_base = quality.summarise([quality.measure(f, sc) for f, sc in zip(base.frames, scenes)])
    for m in [None, *all_methods]:
        name = "original" if m is None else m.name
        t = tallies[name]
        q = q_base if m is None else quality.summarise([quality.measure(f, sc) for f, sc in zip(t.frames, scenes)])
        finite = [v for v in t.psnr if math.isfinite(v)]
        out.append({
            "name": name, "group": "original" if m is None else m.group,
            "config": {"policies": [] if m is None else [{"name": a, **b} for a, b in m.policies],
                       "adapter_kwargs": {**s.adapter_kwargs, **({} if m is None else m.adapter_kwargs)}},
            "time_s": sum(t.wall), "speedup": sum(base.wall) / sum(t.wall),
            "nfe_ratio": base.calls["computed"] / max(t.calls["computed"], 1),
            "frames_ratio": base.calls["frames_computed"] / max(t.calls["frames_computed"], 1),
            "flops": t.flops, "flops_speedup": base.flops / t.flops if t.flops else None,
            # clips equal to the original (infinite PSNR) are left out of the mean; all equal: null
            "psnr": statistics.fmean(finite) if m is not None and finite else None,
            "psnr_clips": [v if math.isfinite(v) else None for v in t.psnr],
            "ssim": None if m is None else statistics.fmean(t.ssim),
            "quality": q["quality"], "adherence": q["adherence"],
            "calls": t.calls, "policy_share": t.policy_s / sum(t.wall),
            "memory_mb": t.memory / 2**20, "cuda_peak_mb": t.cuda_peak / 2**20 if t.cuda_peak else None,
            "timeline": t.modes if (m is not None and m.group == "scope") else None,
            "work": attrs.asdict(t.work),  # summed over the prompts
            "projected_speedup": (ps := projected_speedup(base.work, t.work, table)),
            "projected_at": table.config if ps is not None else None,
        })
    return {
        "config": {"adapter": adapter, "adapter_kwargs": s.adapter_kwargs, "prompts": n, "seed": seed,
                   "latent_frames": frames, "quick": quick, "threads": torch.get_num_threads(),
                   "prompts_used": [sc.prompt for sc in scenes], "seeds": seeds,
                   "teacache_calibration": cal},
        "methods": out,
        "length": length_rows,
        "projection": table.to_dict() if table is not None else None,
    }


def _length_scaling(orig: Any, scope: Any, scene: Any, seed: int, lengths: tuple[int, ...],
                    bar: Any) -> list[dict]:
    rows = []
    for f in lengths:
        _, t0, _ = _generate(orig, scene.prompt, f, seed)
        bar.update(1)
        _, t1, _ = _generate(scope, scene.prompt, f, seed)
        bar.update(1)
        rows.append({"latent_frames": f, "original_s": t0, "scope_s": t1, "speedup": t0 / t1})
    return rows


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "inf" if spec == "psnr" else "-"
    return format(v, ".2f" if spec == "psnr" else spec)


def markdown(doc: dict[str, Any]) -> str:
    c, proj = doc["config"], doc.get("projection")
    at = f" projected at {proj['config']} |" if proj else ""
    lines = [f"# bench step: {c['adapter']} ({c['prompts']} held-out prompts, {c['latent_frames']} latent frames)",
             "", f"adapter settings: `{json.dumps(c['adapter_kwargs'])}`; {c['threads']} threads", "",
             f"| method | time (s) | speedup |{at} NFE ratio | frames ratio | FLOPs (G) | FLOPs speedup "
             "| PSNR (dB) | SSIM | world quality | adherence | policy share | memory (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if proj else "")]
    for m in doc["methods"]:
        orig = m["name"] == "original"
        projected = f" {_fmt(m.get('projected_speedup'))}x |" if proj else ""
        lines.append(
            f"| {m['name']} | {m['time_s']:.2f} | {m['speedup']:.2f}x |{projected} {m['nfe_ratio']:.2f} "
            f"| {m['frames_ratio']:.2f} "
            f"| {m['flops'] / 1e9:.1f} | {_fmt(m['flops_speedup'])}x | {'-' if orig else _fmt(m['psnr'], 'psnr')} "
            f"| {'-' if orig else _fmt(m['ssim'], '.4f')} | {m['quality']:.3f} | {m['adherence']:.2f} "
            f"| {m['policy_share']:.3f} | {m['memory_mb']:.2f} |")
    lines += ["", "| latent frames | original (s) | SCOPE (s) | speedup |", "|---|---|---|---|"]
    for r in doc["length"]:
        lines.append(f"| {r['latent_frames']} | {r['original_s']:.2f} | {r['scope_s']:.2f} "
                     f"| {r['speedup']:.2f}x |")
    if proj:
        lines += ["", f"Projected at {proj['config']}: each method's computed model calls and commit passes "
                  "priced with that configuration's cost table (a call whole, a cached or predicted call free, no "
                  f"decode), the original's price over the method's; the table's source: {proj['source']}."]
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    from accelframe_bench import charts
    from accelframe_bench.reports import write_tables

    written = write_tables(doc, out, markdown)
    pts = [(m["speedup"], m["psnr"] if m["psnr"] is not None else math.inf, m["name"])
           for m in doc["methods"] if m["name"] != "original"]
    written.append(charts.scatter(out / "pareto.png", pts, xlabel="speedup", ylabel="PSNR (dB)"))
    scope = next(m for m in doc["methods"] if m["group"] == "scope")
    written.append(charts.timeline(out / "timeline.png", [(f"{doc['config']['adapter']} {scope['name']}",
                                                          scope["timeline"] or [])]))
    rows = doc["length"]
    written.append(charts.grouped_bars(
        out / "length.png", [f"{r['latent_frames']} F" for r in rows],
        [[r["original_s"] for r in rows], [r["scope_s"] for r in rows]], ["original", "SCOPE"],
        ylabel="denoising time (s)", notes=[f"{r['speedup']:.2f}x" for r in rows]))
    ms = [m for m in doc["methods"] if m["name"] != "original"]
    written.append(charts.grouped_bars(
        out / "memory.png", [str(i + 1) for i in range(len(ms))], [[m["memory_mb"] for m in ms]],
        ["added memory: methods numbered as in results.md"], ylabel="MB", width=max(640, 40 * len(ms))))
    return written


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default="skyreels-v2-df", choices=ADAPTERS,
                   help="loop to accelerate (default: skyreels-v2-df, 50 steps, asynchronous)")
    p.add_argument("--prompts", type=int, default=16, help="held-out prompts (default: 16)")
    p.add_argument("--quick", action="store_true",
                   help="1 prompt, 9 latent frames, one setting per technique: under a minute on 2 CPU cores")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated method names to run (SCOPE's own rows always run)")
    p.add_argument("--project", default=None, metavar="NAME",
                   help="price each method's counted calls with the cost table of this configuration and report "
                        f"the speedup projected there ({PROJECT_HELP}); 'none': no projection (default: the adapter's: "
                        + ", ".join(f"{a} at {c}" for a, c in PROJECTS.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for results.json, results.md and the plots (default: bench-step-ADAPTER)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.add_argument("--overwrite", dest="force", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe_bench.reports import fresh_out, report
    from accelframe_bench.costs import cost_table

    project = getattr(args, "project", None)
    table = cost_table(PROJECTS.get(args.adapter) if project is None else project, "bench step")
    out = Path(args.out or f"bench-step-{args.adapter}")

    fresh_out("bench step", out, ("results.json", "results.md", "pareto.png", "timeline.png", "length.png",
                                  "memory.png"), args.force)
    n = 1 if args.quick else args.prompts
    only = [o.strip() for o in args.only.split(",")] if args.only else None
    doc = run_bench(adapter=args.adapter, n=n, seed=args.seed, quick=args.quick, only=only, quiet=args.json,
                    hooks=hooks, table=table)
    return report(doc, out, write_outputs, markdown, args.json)


__all__ = ["ADAPTERS", "PROJECTS", "Method", "configure", "markdown", "methods", "run", "run_bench", "setup",
           "write_outputs"]
