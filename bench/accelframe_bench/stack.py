"""``accelframe bench stack``: what stacking the step, block and stream levels gives on the tiny world today.

The project's promise is that SCOPE (a step policy), SDVG (a block policy) and StreamDiffusionV2's
stream batch (a runtime) stack. This bench measures every combination of the three levels on
held-out prompts of the embedded world, with the ``self-forcing`` adapter, the world target
(``size="world"``) and the world drafter (``size="world-drafter"``), 27 latent frames (9 blocks),
batch 1, in one process, every configuration on the same prompt with the same seed, interleaved
prompt by prompt (as ``bench block`` does) so that machine noise falls on all of them alike:

- ``baseline``: the target alone, sequential (``pipe.generate`` with decoding);
- ``step``: :data:`STEP_POLICY` on target and drafter (the step bench's best for this loop;
  ``--step scope`` for SCOPE);
- ``block``: SDVG at its operating tau, calibrated on training prompts as ``bench block`` does
  (73 % of drafts accepted) or set with ``--tau``;
- ``stream``: the stream batch (``pipe.stream(..., stream_batch=True)``), one text-to-video stream of
  the prompt whose frames have all arrived (a :class:`~accelframe.streaming.source.VirtualClock`,
  so nothing waits for real time): consecutive chunks in flight at staggered steps, one batched
  forward per micro-step;
- every pair, and all three;
- ``stream (2 ranks)``: StreamDiffusionV2's pipeline parallelism, the stream loop with the DiT's
  blocks split over 2 ``torch.distributed`` processes (``pipe.stream(..., stream_batch=True,
  ranks=2)``, gloo on the CPU, each with the bench's thread count), run by
  :func:`accelframe_adapters.parallel.trial.launch` for each prompt's video (same prompt, seed and
  latent frames, text-to-video), decoding on the ranks' decode threads; with the step level its
  policy decides on rank 0, as in one process (``--ranks N`` sets the count; 0 or 1 leaves these
  rows out; ``--quick`` leaves them out unless ``--ranks`` is given: a launch costs 4 to 10 s,
  which would take it past 90 s). The ring serves no drafter, so the rows with the block level are
  refused by the stream loop's own validation (the row carries its message, every number null).

The stream batch runs on the step executor (:mod:`accelframe.executor`), as the engine does: the step
policy decides row by row, and with SDVG the drafter's chunks run in the batch and are judged in
order, so every combination runs. A combination the runtime still refused would be refused before
any model call by the stream loop's own validation, and its row would say so (``"refused"``: the
:class:`~accelframe.errors.IncompatibleError` message, every number null) rather than run something
else under its name; none of the one-process rows is refused today.

Timing the ranks: a launch spawns fresh processes that import torch, load the model and join the
process group (4 to 10 s for the world's 1 s video here), which would measure process start, not the
runtime. The row is timed as one process is: rank 0's ``pipe.stream`` wall time (decoding
included); ``launch_s`` gives the whole launch as seen from the bench, process start included.
Its target calls are rank 0's statistics, counted as in one process. The other rows run warmed
up in this process; the ranks are fresh processes every video and get no warm-up.

Per row: ``speedup`` (the baseline's mean wall time per video over the row's, decoding included),
``fps`` (pixel frames over wall time), ``nfe_ratio`` (the baseline's computed target calls over the
row's, from ``result.stats``, counted alike for ``generate`` and the stream loop: the stream batch
counts one call per row of a batched forward), SDVG's ``accept_rate`` (accepted drafts over the
blocks after block 0, which SDVG always regenerates, from ``stats.blocks``), the world's ``quality``
of the decoded clips and its ``quality_retention`` against the baseline, ``psnr`` / ``ssim``
against the baseline's decoded frames, and ``composition_efficiency`` = the row's speedup / the
product of the speedups of the single levels it stacks (null for a single level and for a refused
row): 1.0 means the levels' gains multiply, less that they overlap or get in each other's way.

Projected at real scale (issue 23 item 6): each row's work, counted from its runs' statistics and
summed over its videos (``work``: computed calls and commit passes per model, decoded latent frames,
scored pixel frames; see :func:`work`), is priced with the cost table of ``--project`` (default
:data:`DEFAULT_PROJECT`; ``none``: no projection) by :func:`accelframe_bench.costs.price`;
``projected_speedup`` is the baseline's price over the row's, ``projected_at`` the configuration,
``composition_efficiency_projected`` the measured one's arithmetic on projected speedups, and the
document's ``projection`` the table (its source included). The ranks' rows and refused rows are not
projected (null).

Written to ``--out``: ``results.json``, ``results.md`` and ``pareto.png`` (speedup against world quality).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import attrs
import torch

from accelframe.errors import ConfigError, IncompatibleError
from accelframe.metrics import psnr, ssim
from accelframe.progress import progress_bar
from accelframe_bench.costs import (
    DEFAULT_PROJECT,
    PROJECT_HELP,
    CostTable,
    Counts,
    cost_table,
    projected_speedup,
    work,
)

OWNER = "bench stack"
LEVELS = ("step", "block", "stream")
LATENT_FRAMES = 27  # 9 blocks of 3: SDVG's protocol and the world's training length
# The step level's policy: the best for this loop on the step bench's Pareto front. In
# ``bench step --adapter self-forcing --prompts 8`` (docs/policies.md) SCOPE's magi-1 preset, like
# every adaptive policy, skips no call of the 4-step loop (NFE ratio 1.00, the original bit for
# bit): the probe moves more between the four sigmas than any threshold allows. TaylorSeer every
# 3 calls (its "slow" row) is the front's point that keeps the picture: 2.00x, 25.1 dB, world
# quality 0.624 of 0.660. ``--step scope`` runs SCOPE instead (the issue's named stack).
STEP_POLICIES = {
    "taylorseer": ("taylorseer", {"interval": 3, "applies_to": "both"}),
    "scope": ("scope", {"preset": "magi-1", "applies_to": "both"}),
}
STEP_POLICY = STEP_POLICIES["taylorseer"]
OPERATING = 0.73  # SDVG's operating point: the share of drafts accepted on training prompts (its paper's)
STREAM_FPS = 16.0  # the source's nominal rate; every frame has arrived when the stream starts
OUTPUTS = ("results.json", "results.md", "pareto.png")
RANKS = 2  # the pipeline-parallel rows' ranks by default (issue 22: "the stream level ... as 2 ranks")


def level_sets() -> list[tuple[str, ...]]:
    """The rows' levels in table order: none (the baseline), each level, every pair, all three."""
    return [combo for k in range(len(LEVELS) + 1) for combo in combinations(LEVELS, k)]


def composition_efficiency(levels: tuple[str, ...], speedup: float | None,
                           singles: dict[str, float | None]) -> float | None:
    """``speedup`` / the product of ``singles[level]`` over ``levels``; None for fewer than two
    levels, a refused row or a level whose own speedup is unknown."""
    if len(levels) < 2 or speedup is None:
        return None
    product = 1.0
    for lv in levels:
        s = singles.get(lv)
        if s is None or s <= 0:
            return None
        product *= s
    return speedup / product


@attrs.frozen(kw_only=True)
class Config:
    """One row: the levels it stacks and what they are here."""

    levels: tuple[str, ...]
    tau: float | None = None
    step: tuple[str, dict[str, Any]] = STEP_POLICY
    ranks: int = 1  # > 1: the stream level on the pipeline-parallel runtime, over this many processes

    @property
    def name(self) -> str:
        name = " + ".join(self.levels) if self.levels else "baseline"
        return f"{name} ({self.ranks} ranks)" if self.ranks > 1 else name

    @property
    def parallel(self) -> bool:
        return self.ranks > 1

    @property
    def stream(self) -> bool:
        return "stream" in self.levels

    def policies(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if "step" in self.levels:
            out.append(self.step)
        if "block" in self.levels:
            out.append(("sdvg", {"tau": self.tau}))
        return out

    def describe(self) -> list[dict[str, Any]]:
        """The row's ``policies``: the stacked policies and, for the stream level, the runtime."""
        out = [{"name": n, **kw} for n, kw in self.policies()]
        if self.parallel:
            out.append({"name": "pipeline-parallel", "ranks": self.ranks,
                        "runtime": f"pipe.stream(..., stream_batch=True, ranks={self.ranks}): {self.ranks} "
                                   "processes (gloo), the DiT's blocks split over them, the step policies deciding "
                                   "on rank 0, decoding on the ranks' decode threads"})
        elif self.stream:
            out.append({"name": "stream-batch", "runtime": "StreamLoop(stream_batch=True)"})
        return out


def configs(tau: float, step: tuple[str, dict[str, Any]] = STEP_POLICY, ranks: int = RANKS) -> list[Config]:
    """Every row in table order: :func:`level_sets` in one process, then (``ranks`` > 1) the stream
    level on ``ranks`` pipeline-parallel processes, alone and with the other levels."""
    out = [Config(levels=ls, tau=tau if "block" in ls else None, step=step) for ls in level_sets()]
    if ranks > 1:
        out += [Config(levels=ls, tau=tau if "block" in ls else None, step=step, ranks=ranks)
                for ls in level_sets() if "stream" in ls]
    return out


# ------------------------------------------------------------------------------------------------
# projection at real scale (issue 23 item 6): the run's counted work priced with a cost table
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------


def build(models: Any, cfg: Config) -> Any:
    """The pipeline of ``cfg``: the target, the drafter when the block level is on, the policies."""
    from accelframe.pipeline import Pipeline

    drafted = "block" in cfg.levels
    pipe = Pipeline(models.target, drafter=models.drafter if drafted else None, hooks=models.hooks, trace=False,
                    decode_worker=models.decode_worker)
    for name, kw in cfg.policies():
        pipe.use(name, **({**kw, "scorer": models.scorer} if name == "sdvg" else kw))
    return pipe


def source(adapter: Any, prompt: str, seed: int, frames: int) -> Any:
    """One text-to-video stream of ``prompt``: ``frames`` latent frames' worth of pixel frames."""
    from accelframe.adapter import pixel_frames
    from accelframe.streaming.source import StreamSource

    return StreamSource(id="s", prompt=prompt, num_frames=pixel_frames(adapter, frames), fps=STREAM_FPS, seed=seed)


def refusal(pipe: Any, src: Any) -> str | None:
    """The stream loop's own validation of a stream-batch run of ``pipe``, which runs no model:
    the :class:`IncompatibleError` message when the runtime refuses the stack, else None."""
    from accelframe.streaming import StreamLoop

    try:
        StreamLoop(pipe, [src], stream_batch=True)
    except IncompatibleError as err:
        return str(err)
    return None


def pp_refusal(pipe: Any, cfg: Config, src: Any) -> str | None:
    """The stream loop's own validation of ``pipe`` on ``cfg.ranks`` ranks, which runs no model
    and starts no process: the refusal's message (a drafter: the ring serves none), else None."""
    from accelframe.streaming import StreamLoop

    try:
        StreamLoop(pipe, [src], stream_batch=True, ranks=cfg.ranks)
    except (IncompatibleError, ConfigError) as err:
        return str(err)
    return None


def arrived_clock(src: Any) -> Any:
    """A virtual clock that starts after ``src``'s last arrival: the whole clip is there, so chunks
    pile up in the stream batch as they would behind a live source at full load, and nothing waits
    for real time."""
    from accelframe.streaming.source import VirtualClock

    return VirtualClock(start=src.arrival_s(src.total - 1) + 1.0)


def run_video(pipe: Any, *, stream: bool, prompt: str, seed: int,
              frames: int) -> tuple[torch.Tensor, float, float, Any]:
    """One video of ``pipe``: ``pipe.generate``, or (``stream``) the stream batch of one
    text-to-video stream whose frames have all arrived. Returns its decoded pixel frames
    ``[T, 3, H, W]`` in [0, 1], wall seconds, seconds to its first emitted frame, and the run's result."""
    first: list[float] = []

    def mark(*_: Any) -> None:
        if not first:
            first.append(time.perf_counter())

    if stream:
        src = source(pipe.adapter, prompt, seed, frames)
        t0 = time.perf_counter()
        res = pipe.stream([src], clock=arrived_clock(src), stream_batch=True, on_frames=mark)
        video = res.outputs["s"].frames
    else:
        t0 = time.perf_counter()
        res = pipe.generate([prompt], num_frames=frames, seed=seed, on_unit=mark)
        video = res.frames[0]
    wall = time.perf_counter() - t0
    return video, wall, (first[0] - t0) if first else wall, res


def _run(pipe: Any, cfg: Config, prompt: str, seed: int, frames: int) -> tuple[torch.Tensor, float, Any]:
    """One video of a row: decoded pixel frames ``[T, 3, H, W]`` in [0, 1], wall seconds, the run's result."""
    video, wall, _, res = run_video(pipe, stream=cfg.stream, prompt=prompt, seed=seed, frames=frames)
    return video, wall, res


def _run_ranks(adapter: Any, cfg: Config, prompt: str, seed: int,
               frames: int) -> tuple[torch.Tensor, float, int, float]:
    """One video on ``cfg.ranks`` processes: decoded pixel frames ``[T, 3, H, W]`` in [0, 1], rank
    0's ``pipe.stream`` wall seconds, target calls and the launch's wall seconds."""
    import tempfile

    from accelframe_adapters.parallel import trial

    desc = {"size": adapter.model_config.size, "decoder": adapter.model_config.decoder,
            "streams": [{"id": "s", "prompt": prompt, "seed": seed, "frames": adapter.pixel_frames(frames),
                         "fps": STREAM_FPS}],
            "clock": {"after_arrival": True},  # every frame has arrived, as for the one-process rows
            "policies": [[name, kw] for name, kw in cfg.policies()]}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="accelframe-stack-") as tmp:
        doc, _ = trial.launch(desc, cfg.ranks, Path(tmp) / "rank0.pt",
                              env={"OMP_NUM_THREADS": str(torch.get_num_threads())})
    launched = time.perf_counter() - t0
    if doc["error"] is not None:
        raise RuntimeError(f"{cfg.name}: the {cfg.ranks}-rank run failed: {doc['error']}")
    computed = doc["stats"]["calls"]["target"]["computed"]
    return doc["frames"]["s"], float(doc["wall_s"]), computed, launched


def counts(stats: dict[str, Any], cfg: Config) -> tuple[int, int, int]:
    """One video's ``(computed target calls, routed drafts, accepted drafts)`` from its run's
    ``stats.to_dict()``, the same for ``generate`` and the stream loop (both count on the step
    executor). Routed: the blocks after block 0 (SDVG always regenerates block 0, so it is never
    among the accepted); zero without the block level."""
    computed = stats["calls"]["target"]["computed"]
    if "block" not in cfg.levels:
        return computed, 0, 0
    return computed, stats["units"] - 1, stats["blocks"]["accepted"]


@attrs.define
class _Tally:
    wall: list[float] = attrs.field(factory=list)
    computed: int = 0
    frames: int = 0
    routed: int = 0  # drafted blocks SDVG routed (block 0 is not) and those it accepted
    accepted: int = 0
    clips: list[Any] = attrs.field(factory=list)
    psnr: list[float] = attrs.field(factory=list)
    ssim: list[float] = attrs.field(factory=list)
    launch: list[float] = attrs.field(factory=list)  # the ranks' rows: whole launches, process start included
    work: Counts | None = None  # summed over the videos, for pricing; None for the ranks' rows (not counted)


def _check(n: int, tau: float | None, frames: int, step: str = "taylorseer", ranks: int = RANKS) -> None:
    if step not in STEP_POLICIES:
        raise ConfigError(OWNER, "--step", step, "one of " + ", ".join(STEP_POLICIES))
    if not isinstance(n, int) or n < 1:
        raise ConfigError(OWNER, "--prompts", n, "an int >= 1")
    if tau is not None and not math.isfinite(tau):
        raise ConfigError(OWNER, "--tau", tau, "a finite number")
    if not isinstance(frames, int) or frames < 3 or frames % 3:
        raise ConfigError(OWNER, "frames", frames, "a positive multiple of 3 latent frames")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 0:
        raise ConfigError(OWNER, "--ranks", ranks, "an int >= 0 (0 or 1: no pipeline-parallel rows)")


def run_bench(*, n: int, seed: int = 0, tau: float | None = None, quick: bool = False,
              frames: int = LATENT_FRAMES, step: str = "taylorseer", quiet: bool = False,
              hooks: Any = None, ranks: int = RANKS, table: CostTable | None = None, decoder: str = "vae",
              decode_worker: bool = False) -> dict[str, Any]:
    """The table's document. ``hooks``: the plugin manager every pipeline runs on (default:
    :func:`accelframe_bench.hooks.default_hooks`); ``ranks`` > 1: the pipeline-parallel rows on
    that many processes; ``table``: the cost table the rows' work is priced with (None: no projection);
    ``decoder``, ``decode_worker``: as ``bench block``'s (every row the same layout)."""
    from accelframe_adapters.world import clips, quality
    from accelframe_bench.block import DECODERS, Models, calibrate_taus, draft_scores

    _check(n, tau, frames, step, ranks)
    if decoder not in DECODERS:
        raise ConfigError(OWNER, "decoder", decoder, "one of " + ", ".join(DECODERS))
    models = Models.load(hooks, decoder=decoder, decode_worker=decode_worker)
    rng = random.Random(seed)
    scenes = clips.sample_scenes(n, 7_000 + seed, split="eval")  # held out: never calibrated on
    seeds = [rng.randrange(2**31) for _ in scenes]
    if tau is None:
        cal = clips.sample_scenes(2 if quick else 8, 3_000 + seed, split="train")
        cal_seeds = [rng.randrange(2**31) for _ in cal]
        tau = calibrate_taus(draft_scores(models, [s.prompt for s in cal], cal_seeds), (OPERATING,))[OPERATING]
        calibration: dict[str, Any] = {"source": "calibrated", "accept_target": OPERATING,
                                       "prompts": [s.prompt for s in cal], "seeds": cal_seeds}
    else:
        calibration = {"source": "--tau"}
    cfgs = configs(tau, STEP_POLICIES[step], ranks)
    pipes = {c.name: build(models, c) for c in cfgs}
    try:
        src0 = source(models.target, scenes[0].prompt, seeds[0], frames)
        refused = {c.name: refusal(pipes[c.name], src0) for c in cfgs if c.stream and not c.parallel}
        refused.update({c.name: pp_refusal(pipes[c.name], c, src0) for c in cfgs if c.parallel})
        live = [c for c in cfgs if not refused.get(c.name)]
        tallies = {c.name: _Tally() for c in live}
        with progress_bar(total=n * len(live), desc=OWNER, unit="video", quiet=quiet) as bar:
            for c in live:  # warm-up: one block each (not reported); the ranks start afresh every video
                if not c.parallel:
                    _run(pipes[c.name], c, scenes[0].prompt, 0, 3)
            for scene, sd in zip(scenes, seeds):
                base_video = None
                for c in live:  # the baseline first: the others are compared with its frames
                    t = tallies[c.name]
                    if c.parallel:
                        video, wall, computed, launched = _run_ranks(models.target, c, scene.prompt, sd, frames)
                        routed = accepted = 0
                        t.launch.append(launched)
                    else:
                        video, wall, res = _run(pipes[c.name], c, scene.prompt, sd, frames)
                        st = res.stats.to_dict()
                        computed, routed, accepted = counts(st, c)
                        w = work(st, pipes[c.name].adapter)
                        t.work = w if t.work is None else t.work + w
                    t.wall.append(wall)
                    t.computed += computed
                    t.routed += routed
                    t.accepted += accepted
                    t.frames += int(video.shape[0])
                    t.clips.append(quality.measure(video, scene))
                    if base_video is None:
                        base_video = video
                    else:
                        t.psnr.append(psnr(video, base_video))
                        t.ssim.append(ssim(video, base_video))
                    bar.update(1)
    finally:
        for p in pipes.values():  # the policies leave the manager (a caller's, the CLI's)
            p.close()
    doc = document(cfgs, tallies, refused, quality, table)
    doc["config"] = {"adapter": "self-forcing", "target": "world", "drafter": "world-drafter", "prompts": n,
                     "seed": seed, "latent_frames": frames, "batch": 1, "quick": quick,
                     "threads": torch.get_num_threads(), "ranks": ranks if ranks > 1 else None,
                     "rank_timing": "rank 0's pipe.stream wall seconds (launch_s: the whole launch)",
                     "tau": tau, "calibration": calibration, "decoder": decoder, "decode_worker": decode_worker,
                     "step_policy": {"name": STEP_POLICIES[step][0], **STEP_POLICIES[step][1]},
                     "prompts_used": [s.prompt for s in scenes], "seeds": seeds}
    return doc


def document(cfgs: list[Config], tallies: dict[str, _Tally], refused: dict[str, str | None],
             quality: Any, table: CostTable | None = None) -> dict[str, Any]:
    """Rows from the tallies (one per config; a refused config's numbers null) and the baseline;
    with ``table``, each row's work priced with it against the baseline's (``projected_speedup``)."""
    base = tallies["baseline"]
    t_base = statistics.fmean(base.wall)
    q_base = quality.summarise(base.clips)["quality"]

    def row(c: Config) -> dict[str, Any]:
        out: dict[str, Any] = {"name": c.name, "levels": list(c.levels), "ranks": c.ranks,
                               "policies": c.describe(), "refused": refused.get(c.name)}
        t = tallies.get(c.name)
        if t is None:
            return {**out, **{k: None for k in ("time_s", "launch_s", "speedup", "fps", "nfe_ratio", "accept_rate",
                                                "quality", "quality_retention", "psnr", "ssim", "work",
                                                "projected_speedup", "projected_at")}}
        wall = statistics.fmean(t.wall)
        q = quality.summarise(t.clips)["quality"]
        finite = [v for v in t.psnr if math.isfinite(v)]
        return {**out, "time_s": wall, "launch_s": statistics.fmean(t.launch) if t.launch else None,
                "speedup": t_base / wall, "fps": t.frames / sum(t.wall),
                "nfe_ratio": base.computed / t.computed if t.computed else None,
                "accept_rate": t.accepted / t.routed if t.routed else None,
                "quality": q, "quality_retention": q / q_base if q_base else None,
                # an exact match (infinite PSNR) is left out of the mean; all exact: null, as bench step
                "psnr": statistics.fmean(finite) if finite else None,
                "ssim": statistics.fmean(t.ssim) if t.ssim else None,
                "work": attrs.asdict(t.work) if t.work is not None else None,  # summed over the videos
                "projected_speedup": (ps := projected_speedup(base.work, t.work, table)),
                "projected_at": table.config if ps is not None else None}

    rows = [row(c) for c in cfgs]
    # the single levels in one process; a pipeline-parallel row is a single level too (no efficiency)
    singles = {r["levels"][0]: r["speedup"] for r in rows if len(r["levels"]) == 1 and r["ranks"] == 1}
    projected = {r["levels"][0]: r["projected_speedup"] for r in rows if len(r["levels"]) == 1 and r["ranks"] == 1}
    for r in rows:
        r["composition_efficiency"] = composition_efficiency(tuple(r["levels"]), r["speedup"], singles)
        r["composition_efficiency_projected"] = composition_efficiency(tuple(r["levels"]), r["projected_speedup"],
                                                                       projected)
    baseline = next(r for r in rows if not r["levels"])
    return {"rows": [r for r in rows if r["levels"]], "baseline": baseline,
            "projection": table.to_dict() if table is not None else None}


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    from accelframe_bench.reports import cell

    c, proj = doc["config"], doc.get("projection")
    at = f" | projected at {proj['config']} | projected composition efficiency" if proj else ""
    lines = [f"# bench stack: step, block and stream levels on the tiny world ({c['prompts']} held-out prompts, "
             f"{c['latent_frames']} latent frames, {c['threads']} threads, SDVG tau {c['tau']:.3f})", "",
             f"| levels | speedup{at} | fps | NFE ratio | accept rate | world quality | retention | PSNR (dB) "
             "| SSIM | composition efficiency | refused |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if proj else "")]
    for r in [doc["baseline"], *doc["rows"]]:
        exact = r["levels"] and r["refused"] is None and r["psnr"] is None  # every clip equal to the baseline's
        projected = (f" | {cell(r.get('projected_speedup'), '.2f')} "
                     f"| {cell(r.get('composition_efficiency_projected'), '.2f')}") if proj else ""
        lines.append(f"| {r['name']} | {cell(r['speedup'], '.2f')}{projected} | {cell(r['fps'], '.1f')} "
                     f"| {cell(r['nfe_ratio'], '.2f')} | {cell(r.get('accept_rate'), '.1%')} "
                     f"| {cell(r['quality'], '.3f')} | {cell(r['quality_retention'], '.1%')} "
                     f"| {'inf' if exact else cell(r['psnr'], '.2f')} | {cell(r['ssim'], '.4f')} "
                     f"| {cell(r['composition_efficiency'], '.2f')} | {r['refused'] or ''} |")
    if proj:
        lines += ["", f"Projected at {proj['config']}: each row's counted work (model calls, commits, decoded "
                  "latent frames, scored pixel frames, summed over its videos) priced with that configuration's "
                  f"cost table, the baseline's price over the row's; the table's source: {proj['source']}. The "
                  "ranks' rows are not projected."]
    timed = [r for r in doc["rows"] if r.get("launch_s") is not None]
    if timed:
        lines.append("")
    for r in timed:
        lines.append(f"{r['name']}: timed by rank 0's pipe.stream clock ({r['time_s']:.3f} s a video, decoding "
                     f"included); the whole launch, process start and model load included, took "
                     f"{r['launch_s']:.2f} s a video.")
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    from accelframe_bench import charts
    from accelframe_bench.reports import write_tables

    written = write_tables(doc, out, markdown)
    pts = [(r["speedup"], r["quality"], r["name"]) for r in [doc["baseline"], *doc["rows"]]
           if r["speedup"] is not None]  # a refused row has no point
    written.append(charts.scatter(out / "pareto.png", pts, xlabel="speedup", ylabel="world quality"))
    return written


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts (default: 8)")
    p.add_argument("--quick", action="store_true",
                   help="2 prompts, SDVG's tau calibrated on 2 training prompts, no pipeline-parallel rows unless "
                        "--ranks is given: under 90 s on one thread")
    p.add_argument("--tau", type=float, default=None,
                   help="SDVG's threshold instead of the one calibrated to accept 73 %% of drafts on "
                        "training prompts")
    p.add_argument("--step", default="taylorseer", choices=tuple(STEP_POLICIES),
                   help="the step level's policy: taylorseer (interval 3, the step bench's best for this loop) "
                        "or scope (magi-1 preset) (default: taylorseer)")
    p.add_argument("--ranks", type=int, default=None, metavar="N",
                   help="the stream level also on N pipeline-parallel ranks (local processes, gloo), alone and "
                        "with the step level (the block level is reported refused: the ring serves no drafter); "
                        f"0 or 1: leave these rows out (default: {RANKS}; with --quick 0, as the launches would "
                        "take it past 90 s)")
    p.add_argument("--project", default=DEFAULT_PROJECT, metavar="NAME",
                   help="price each row's counted work with the cost table of this configuration and report the "
                        f"speedup projected there ({PROJECT_HELP}); 'none': no projection (default: {DEFAULT_PROJECT}, the SDVG "
                        "paper's 14B target with its 1.3B drafter)")
    p.add_argument("--decoder", choices=("vae", "tiny"), default="vae",
                   help="what decodes latents: the world VAE's decoder (default) or its tiny decoder")
    p.add_argument("--decode-worker", action="store_true",
                   help="every row decodes (and scores drafts) on a worker thread beside the denoising")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    p.add_argument("--out", default="bench-stack", metavar="DIR",
                   help="folder for results.json, results.md and pareto.png (default: bench-stack)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe_bench.reports import fresh_out, report

    n = 2 if args.quick else args.prompts
    ranks = args.ranks if args.ranks is not None else (0 if args.quick else RANKS)
    # bad input is named before any folder or model is touched
    _check(args.prompts, args.tau, LATENT_FRAMES, args.step, ranks)
    if ranks > 1:
        from accelframe_adapters import presets

        layers = presets.preset("wan", "world").dit_config().num_layers
        if ranks > layers:  # every rank runs at least one of the world DiT's blocks
            raise ConfigError(OWNER, "--ranks", ranks, f"0 to {layers}: the world DiT has {layers} blocks")
    table = cost_table(getattr(args, "project", DEFAULT_PROJECT), OWNER)
    out = Path(args.out)
    fresh_out(OWNER, out, OUTPUTS, args.force)
    doc = run_bench(n=n, seed=args.seed, tau=args.tau, quick=args.quick, step=args.step, quiet=args.json,
                    hooks=hooks, ranks=ranks, table=table, decoder=args.decoder, decode_worker=args.decode_worker)
    return report(doc, out, write_outputs, markdown, args.json)


__all__ = ["LEVELS", "RANKS", "STEP_POLICIES", "STEP_POLICY", "Config", "arrived_clock", "build",
           "composition_efficiency", "configs", "configure", "counts", "document", "level_sets", "markdown",
           "pp_refusal", "refusal", "run", "run_bench", "run_video", "source", "write_outputs"]
