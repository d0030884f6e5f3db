"""``accelframe bench block``: SDVG against the target and the drafter on the tiny world, in one process.

SDVG's protocol (its Tables 1 and 2) on held-out prompts of the embedded world, with the
``self-forcing`` adapter: the world target (``size="world"``, 4 guided steps per block) and the
world drafter (``size="world-drafter"``, distilled to one step without guidance), 9 blocks of 3
latent frames, batch 1; ``--decoder tiny`` decodes with the world's tiny decoder, and
``--decode-worker`` decodes and scores on a worker thread beside the denoising (every method, the
baselines too, runs the same layout). Every method
generates the same prompts with the same seeds, interleaved prompt by prompt so that machine noise
falls on all of them alike:

- ``target_only`` and ``draft_only``, the two boundary baselines;
- SDVG at a sweep of thresholds tau (worst-frame aggregation, the paper's Table 1);
- random routing at the accept rate SDVG measured at the operating tau (Table 2);
- SDVG with mean-frame aggregation (Table 2);
- not in the paper: SDVG at the operating tau with ``drafter_context="emitted"``, where a rejected
  draft is replaced in the drafter's KV by the target's block, so the drafter continues the video
  that was emitted rather than its own.

The thresholds are calibrated offline, as the paper's are: the drafter's block scores on training
prompts (never the held-out ones) give the tau at which a chosen share of drafts would pass
(``ACCEPT_TARGETS``; the operating point is the paper's 73 %). ``--taus`` sets them by hand.
SDVG scores drafts with the world's frame reward (``world-reward``, ImageReward's shape);
``--scorer`` names another registered scorer, e.g. ``world-quality``, the world's own measure on
each draft, as a reference for what any reward of one block's frames could route.

Per method: time per video (wall clock of ``generate`` with decoding: decoding and scoring drafts
is part of SDVG's cost), ``speedup`` against target-only, ``model_speedup`` (the same for the
transformer time alone, commits included), accept rate with block 0 excluded, the world's quality
and adherence of the decoded clips, ``quality_retention`` = quality / target-only quality, the
wasted drafter calls and decodes, and ``seams``: the mean absolute pixel change across block
boundaries by where the two blocks came from (:func:`seam_changes`), where a draft next to the
target's block shows its seam.

Projected at real scale (issue 23 item 6), as ``bench stack`` does: each method's work, counted from
its runs' statistics and summed over the prompts (``work``, :func:`accelframe_bench.costs.work`: the
draft-only pipeline's model priced as the drafter, random routing scoring nothing, SDVG scoring the
blocks after block 0), priced with the cost table of ``--project`` (default
:data:`~accelframe_bench.costs.DEFAULT_PROJECT`, the paper's 14B target with its 1.3B drafter;
``none``: no projection): ``projected_speedup`` is target-only's price over the method's,
``projected_at`` the configuration, and the document's ``projection`` the table.

Every routed row also carries ``vs_line``: its quality minus the straight line from target-only's
quality (accept rate 0) to draft-only's (accept rate 1) at its accept rate (:func:`straight_line`).
A router that picks drafts costing less than the average draft is above it (positive).

Written to ``--out``: ``results.json``, ``results.md``, ``pareto.png`` (speedup against world
quality, the paper's Figure 2) and ``accept.png`` (world quality against the accept rate, with the
straight line).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from accelframe.errors import ConfigError
from accelframe.progress import progress_bar
from accelframe_bench.costs import DEFAULT_PROJECT, PROJECT_HELP, CostTable, Counts
from accelframe_policies.sdvg import DEFAULT_SCORER  # SDVG's own default: the world's frame reward

ADAPTER = "self-forcing"
LATENT_FRAMES = 27  # 9 blocks of 3 latent frames: the paper's protocol and the world's training length
# drafts accepted at the calibrated taus (on training prompts); 0.73 is the paper's operating point
ACCEPT_TARGETS = (0.95, 0.85, 0.73, 0.5, 0.3, 0.1)
OPERATING = 0.73
QUICK_ACCEPT_TARGETS = (0.73,)
MEAN_TARGETS = (0.73, 0.5)  # mean-frame aggregation, calibrated to the same accept rates
DECODERS = ("vae", "tiny")  # the Wan adapters' decoder knob: the world VAE's decoder, or its tiny decoder
SEAMS = ("target → target", "target → draft", "draft → target", "draft → draft", "within")  # seam_changes' keys
QUALITY_GOAL = 0.98
SPEEDUP_GOAL = 1.6  # issue 23: the paper's 1.59x at 98.1 %


@attrs.frozen(kw_only=True)
class Method:
    """One row: a pipeline (drafter or not) and its block policy."""

    name: str
    kind: str  # "target_only", "draft_only", "sdvg", "random_routing", "mean_aggregation", "emitted_context"
    policy: tuple[str, dict[str, Any]] | None = None
    tau: float | None = None


# ------------------------------------------------------------------------------------------------
# set-up
# ------------------------------------------------------------------------------------------------


@attrs.define
class Models:
    """The models every pipeline of the bench shares: loaded once."""

    hooks: Any
    target: Any
    drafter: Any
    scorer: Callable[..., torch.Tensor]

    decode_worker: bool = False  # every pipeline decodes (and scores) on a worker thread

    @classmethod
    def load(cls, hooks: Any = None, *, decoder: str = "vae", decode_worker: bool = False,
             scorer: str = DEFAULT_SCORER) -> Models:
        """The world's target, drafter and the registered ``scorer`` on ``hooks`` (default:
        :func:`accelframe_bench.hooks.default_hooks`); ``decoder``: the adapters' ``decoder`` knob
        (both decode with the target's)."""
        from accelframe.pipeline import Pipeline
        from accelframe_bench.hooks import or_default

        hooks = or_default(hooks)
        reg = hooks.registry()
        target = Pipeline(ADAPTER, hooks=hooks, adapter_kwargs={"size": "world", "decoder": decoder}).adapter
        drafter = Pipeline(ADAPTER, hooks=hooks, adapter_kwargs={"size": "world-drafter", "decoder": decoder}).adapter
        return cls(hooks=hooks, target=target, drafter=drafter, scorer=reg.get("scorer", scorer).factory(),
                   decode_worker=decode_worker)

    def pipeline(self, method: Method | None) -> Any:
        """target-only for None; the drafter alone for draft-only; both with the method's policy."""
        from accelframe.pipeline import Pipeline

        worker = self.decode_worker
        if method is None or method.kind == "target_only":
            return Pipeline(self.target, hooks=self.hooks, trace=False, decode_worker=worker)
        if method.kind == "draft_only":
            return Pipeline(self.drafter, hooks=self.hooks, trace=False, decode_worker=worker)
        context = "emitted" if method.kind == "emitted_context" else "own"
        pipe = Pipeline(self.target, drafter=self.drafter, hooks=self.hooks, drafter_context=context,
                        decode_worker=worker)
        name, kw = method.policy
        if name == "sdvg":
            kw = {**kw, "scorer": self.scorer}
        return pipe.use(name, **kw)


def check_scorer(name: str, hooks: Any) -> None:
    """``--scorer`` names a scorer registered on ``hooks``, else a ConfigError listing them (before any
    model loads)."""
    names = hooks.registry().names("scorer")
    if name not in names:
        raise ConfigError("bench block", "--scorer", name,
                          "a registered scorer: " + (", ".join(names) or "none is registered"))


def draft_scores(models: Models, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """Per-frame scores of the drafter's blocks (block 0 excluded) on ``prompts``: ``[N_blocks, F_pix]``.

    The drafter only ever conditions on its own drafts, so a run that accepts nothing scores the
    drafts every run would see (up to the decode cache's history)."""
    pipe = models.pipeline(Method(name="calibration", kind="sdvg", policy=("sdvg", {"tau": float("inf")})))
    try:
        return routed_scores(pipe, prompts, seeds, LATENT_FRAMES)
    finally:
        pipe.close()


def routed_scores(pipe: Any, prompts: list[str], seeds: list[int], frames: int) -> torch.Tensor:
    """Per-frame scores ``[N_blocks, F_pix]`` of the drafts a pipeline's block policy judged (block 0
    excluded) over ``prompts``, read from its traces: with SDVG at tau = +inf, every draft a run
    would see."""
    rows = []
    for prompt, seed in zip(prompts, seeds):
        res = pipe.generate([prompt], num_frames=frames, seed=seed)
        rows += [e["frame_scores"] for e in res.trace.events
                 if e["event"] == "block" and e["unit"] != 0 and e["frame_scores"]]
    return torch.tensor(rows, dtype=torch.float64)


def calibrate_taus(scores: torch.Tensor, targets: tuple[float, ...],
                   aggregation: str = "min") -> dict[float, float]:
    """tau per wanted accept rate: the (1 - rate) quantile of the block scores ``aggregate(scores)``."""
    from accelframe_policies.sdvg import aggregate

    blocks = aggregate(scores, aggregation)  # [N_blocks]
    return {a: float(torch.quantile(blocks, 1.0 - a)) for a in targets}


def methods(taus: dict[float, float], mean_taus: dict[float, float], operating: float) -> list[Method]:
    out = [Method(name="target-only", kind="target_only"), Method(name="draft-only", kind="draft_only")]
    for tau in taus.values():
        out.append(Method(name=f"SDVG tau={tau:.3f}", kind="sdvg", tau=tau, policy=("sdvg", {"tau": tau})))
    out.append(Method(name=f"SDVG emitted context tau={operating:.3f}", kind="emitted_context", tau=operating,
                      policy=("sdvg", {"tau": operating})))
    for tau in mean_taus.values():
        out.append(Method(name=f"SDVG mean tau={tau:.3f}", kind="mean_aggregation", tau=tau,
                          policy=("sdvg", {"tau": tau, "aggregation": "mean"})))
    return out


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------


@attrs.define
class _Tally:
    wall: list[float] = attrs.field(factory=list)
    model_s: float = 0.0
    decode_s: float = 0.0
    block_s: float = 0.0
    routed: int = 0
    accepted: int = 0
    wasted_calls: int = 0
    wasted_decodes: int = 0
    clips: list[Any] = attrs.field(factory=list)
    work: Counts = attrs.field(factory=Counts)  # summed over the prompts, for pricing
    seams: dict[str, list[float]] = attrs.field(factory=dict)  # pixel change per boundary, by its blocks' sources


def seam_changes(frames: torch.Tensor, sources: list[str]) -> dict[str, list[float]]:
    """The mean absolute pixel change across each block boundary of a clip ``frames [T, 3, H, W]``,
    keyed by where its two blocks came from (``"target → draft"``), and every step within a block
    under ``"within"``. ``sources``: per block, ``"target"`` or ``"draft"``."""
    from accelframe_adapters.world import quality

    change = quality.frame_changes(frames.float())
    cross = quality.boundary_pairs(frames.shape[0])
    out: dict[str, list[float]] = {}
    for b, t in enumerate(cross, start=1):
        out.setdefault(f"{sources[b - 1]} → {sources[b]}", []).append(float(change[t]))
    out["within"] = [float(change[t]) for t in sorted(set(range(len(change))) - set(cross))]
    return out


def work_of(stats: dict[str, Any], adapter: Any, kind: str) -> Counts:
    """One run's work for pricing (:func:`accelframe_bench.costs.work`): draft-only's one model is the
    drafter, random routing has no scorer."""
    from accelframe_bench.costs import work

    return work(stats, adapter, as_drafter=kind == "draft_only")


def _run_one(pipe: Any, prompt: str, seed: int, t: _Tally, scene: Any, kind: str) -> None:
    from accelframe_adapters.world import quality

    t0 = time.perf_counter()
    res = pipe.generate([prompt], num_frames=LATENT_FRAMES, seed=seed)
    t.wall.append(time.perf_counter() - t0)
    st = res.stats.to_dict()
    t.model_s += st["time_s"]["model"] + st["time_s"]["commit"]
    t.decode_s += st["time_s"]["decode"]
    t.block_s += st["time_s"]["block"]
    t.wasted_calls += st["blocks"].get("drafter_calls_wasted", 0)
    t.wasted_decodes += st["blocks"].get("decodes_wasted", 0)
    t.work += work_of(st, pipe.adapter, kind)
    if pipe.drafter is not None:  # block 0 is not routed
        t.routed += len(res.sources) - 1
        t.accepted += res.sources[1:].count("draft")
    t.clips.append(quality.measure(res.frames[0], scene))  # [T, 3, H, W] in [0, 1]
    sources = ["draft"] * len(res.sources) if kind == "draft_only" else list(res.sources)
    for key, changes in seam_changes(res.frames[0], sources).items():
        t.seams.setdefault(key, []).extend(changes)


def run_bench(*, n: int, seed: int = 0, quick: bool = False, taus: list[float] | None = None,
              calibration_prompts: int | None = None, quiet: bool = False, hooks: Any = None,
              table: CostTable | None = None, decoder: str = "vae", decode_worker: bool = False,
              scorer: str = DEFAULT_SCORER) -> dict[str, Any]:
    """The table's document. ``hooks``: the plugin manager every pipeline runs on (default:
    :func:`accelframe_bench.hooks.default_hooks`); ``table``: the cost table each method's work is
    priced with (None: no projection); ``decoder``: the adapters' decoder ("vae" or "tiny");
    ``decode_worker``: every method decodes and scores on a worker thread (the same layout for all);
    ``scorer``: the registered scorer SDVG routes with (calibration included)."""
    from accelframe_adapters.world import clips, quality

    if n < 1:
        raise ConfigError("bench block", "prompts", n, "an int >= 1")
    if decoder not in DECODERS:
        raise ConfigError("bench block", "decoder", decoder, "one of " + ", ".join(DECODERS))
    from accelframe_bench.hooks import or_default

    hooks = or_default(hooks)  # one manager for the whole run
    check_scorer(scorer, hooks)
    models = Models.load(hooks, decoder=decoder, decode_worker=decode_worker, scorer=scorer)
    rng = random.Random(seed)
    scenes = clips.sample_scenes(n, 7_000 + seed, split="eval")
    seeds = [rng.randrange(2**31) for _ in scenes]
    k = calibration_prompts or (1 if quick else 8)
    cal_scenes = clips.sample_scenes(k, 3_000 + seed, split="train")
    cal_seeds = [rng.randrange(2**31) for _ in cal_scenes]
    targets = QUICK_ACCEPT_TARGETS if quick else ACCEPT_TARGETS
    mean_targets = MEAN_TARGETS[:1] if quick else MEAN_TARGETS
    cal_prompts = [s.prompt for s in cal_scenes]
    if taus:
        tau_map = {i: float(t) for i, t in enumerate(taus)}
        mean_map: dict[float, float] = {}
        calibration = {"taus": list(tau_map.values()), "source": "--taus"}
    else:
        scores = draft_scores(models, cal_prompts, cal_seeds)  # [N_blocks, F_pix]
        tau_map = calibrate_taus(scores, targets)
        mean_map = calibrate_taus(scores, mean_targets, aggregation="mean")
        calibration = {"prompts": cal_prompts, "seeds": cal_seeds,
                       "min": {str(a): t for a, t in tau_map.items()},
                       "mean": {str(a): t for a, t in mean_map.items()}}
    op_tau = tau_map.get(OPERATING, next(iter(tau_map.values())))
    ms = methods(tau_map, mean_map, op_tau)
    operating = next(m for m in ms if m.kind == "sdvg" and m.tau == op_tau)
    pipes = {m.name: models.pipeline(m) for m in ms}
    tallies = {m.name: _Tally() for m in ms}
    total = n * (len(ms) + 1)
    with progress_bar(total=total, desc="bench block", unit="video", quiet=quiet) as bar:
        for pipe in pipes.values():  # warm-up: one block each
            pipe.generate([scenes[0].prompt], num_frames=3, seed=0)
        # the operating point runs first on every prompt, so random routing can match its accept rate
        order = [operating, *(m for m in ms if m is not operating)]
        for scene, sd in zip(scenes, seeds):
            for m in order:
                _run_one(pipes[m.name], scene.prompt, sd, tallies[m.name], scene, m.kind)
                bar.update(1)
        op = tallies[operating.name]
        matched = op.accepted / op.routed if op.routed else 0.0
        rand = Method(name=f"random routing {matched:.2f}", kind="random_routing",
                      policy=("random-routing", {"accept_rate": matched, "seed": seed}))
        pipes[rand.name] = models.pipeline(rand)
        tallies[rand.name] = _Tally()
        ms.append(rand)
        for scene, sd in zip(scenes, seeds):
            _run_one(pipes[rand.name], scene.prompt, sd, tallies[rand.name], scene, rand.kind)
            bar.update(1)
    for p in pipes.values():
        p.close()
    doc = _document(ms, tallies, operating, calibration, scenes, seeds, n, seed, quick, quality, table)
    doc["config"].update(decoder=decoder, decode_worker=decode_worker, scorer=scorer)
    return doc


def _document(ms: list[Method], tallies: dict[str, _Tally], operating: Method, calibration: dict[str, Any],
              scenes: list[Any], seeds: list[int], n: int, seed: int, quick: bool, quality: Any,
              table: CostTable | None = None) -> dict[str, Any]:
    from accelframe_bench.costs import projected_speedup

    base = tallies["target-only"]
    q_base = quality.summarise(base.clips)["quality"]
    t_base = statistics.fmean(base.wall)

    def row(m: Method) -> dict[str, Any]:
        t = tallies[m.name]
        q = quality.summarise(t.clips)
        return {
            "name": m.name, "kind": m.kind, "tau": m.tau,
            "time_s": statistics.fmean(t.wall), "speedup": t_base / statistics.fmean(t.wall),
            "model_speedup": base.model_s / t.model_s if t.model_s else None,
            "accept_rate": t.accepted / t.routed if t.routed else None,
            "quality": q["quality"], "quality_retention": q["quality"] / q_base if q_base else None,
            "adherence": q["adherence"],
            "parts": {p: q[p] for p in quality.PARTS},
            "time_split_s": {"model": t.model_s / n, "decode": t.decode_s / n, "score": t.block_s / n},
            "wasted_drafter_calls": t.wasted_calls / n, "wasted_decodes": t.wasted_decodes / n,
            "clip_quality": [c.quality for c in t.clips],
            "seams": {k: {"mean_change": statistics.fmean(v), "count": len(v)} for k, v in t.seams.items() if v},
            "work": attrs.asdict(t.work),  # summed over the prompts
            "projected_speedup": (ps := projected_speedup(base.work, t.work, table)),
            "projected_at": table.config if ps is not None else None,
        }

    rows = {m.name: row(m) for m in ms}
    points = [rows[m.name] for m in ms if m.kind == "sdvg"]
    points.sort(key=lambda r: r["tau"], reverse=True)
    draft, target = rows["draft-only"], rows["target-only"]
    for r in rows.values():  # how far each router is above the mix of target's and draft's blocks
        r["vs_line"] = (None if r["accept_rate"] is None else
                        r["quality"] - straight_line(target["quality"], draft["quality"], r["accept_rate"]))
    rand = next(rows[m.name] for m in ms if m.kind == "random_routing")
    op = rows[operating.name]
    best = [p for p in points if p["quality_retention"] is not None and p["quality_retention"] >= QUALITY_GOAL]
    # the coin's realised rate is not exactly the one asked for: read the sweep at that rate
    at_rate = interpolate([(p["accept_rate"], p["quality"]) for p in points], rand["accept_rate"])
    return {
        "projection": table.to_dict() if table is not None else None,
        "config": {"adapter": ADAPTER, "target": "world", "drafter": "world-drafter", "prompts": n, "seed": seed,
                   "latent_frames": LATENT_FRAMES, "batch": 1, "quick": quick, "threads": torch.get_num_threads(),
                   "prompts_used": [s.prompt for s in scenes], "seeds": seeds,
                   "calibration": calibration, "operating_tau": operating.tau},
        "points": points,
        "draft_only": draft,
        "target_only": target,
        "random_routing": {**rand, "matched_to": op["name"], "matched_accept_rate": op["accept_rate"],
                           "reward_quality_at_this_rate": at_rate},
        "mean_aggregation": [rows[m.name] for m in ms if m.kind == "mean_aggregation"],
        "emitted_context": [rows[m.name] for m in ms if m.kind == "emitted_context"],
        "targets": {
            "best_speedup_at_98pct_quality": max((p["speedup"] for p in best), default=None),
            "speedup_1_6x_at_98pct_quality": any(p["speedup"] >= SPEEDUP_GOAL for p in best),
            "above_draft_only_at_every_tau": all(p["quality"] > draft["quality"] for p in points),
            "reward_beats_random_at_matched_rate": (at_rate if at_rate is not None else op["quality"])
            > rand["quality"],
        },
    }


def straight_line(target_quality: float, draft_quality: float, accept_rate: float) -> float:
    """The quality of keeping a fraction ``accept_rate`` of the drafts if every kept draft cost the
    average draft's loss: target-only's quality at 0, draft-only's at 1, linear between. A router
    above it picks drafts that cost less than the average (docs/sdvg.md)."""
    return target_quality + (draft_quality - target_quality) * accept_rate


def interpolate(points: list[tuple[float | None, float]], x: float | None) -> float | None:
    """Linear interpolation of (accept rate, quality) points at rate ``x``; None outside their range."""
    pts = sorted((a, q) for a, q in points if a is not None)
    if x is None or not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (a0, q0), (a1, q1) in zip(pts, pts[1:]):
        if a0 <= x <= a1:
            return q0 if a1 == a0 else q0 + (q1 - q0) * (x - a0) / (a1 - a0)
    return pts[0][1]  # a single point, at x


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    from accelframe_bench.reports import cell

    c, proj = doc["config"], doc.get("projection")
    at = f" projected at {proj['config']} |" if proj else ""
    lines = [f"# bench block: SDVG on the tiny world ({c['prompts']} held-out prompts, {c['latent_frames']} "
             f"latent frames, batch {c['batch']}, {c['threads']} threads)", "",
             f"Decoder: {'the tiny decoder' if c.get('decoder') == 'tiny' else 'the world VAE'}; decoding and "
             f"scoring {'on a worker thread beside the denoising' if c.get('decode_worker') else 'inline'} "
             f"(every method the same). SDVG routes with the scorer `{c.get('scorer', DEFAULT_SCORER)}`.", "",
             f"| method | tau | time / video (s) | speedup |{at} model speedup | accept rate | world quality "
             "| vs line | retention | adherence | wasted drafter calls | wasted decodes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if proj else "")]
    rows = [doc["target_only"], doc["draft_only"], *doc["points"], doc["random_routing"], *doc["mean_aggregation"],
            *doc.get("emitted_context", [])]
    for r in rows:
        lines.append(
            f"| {r['name']} | {cell(r['tau'], '.3f')} | {r['time_s']:.2f} | {r['speedup']:.2f}x "
            + (f"| {cell(r.get('projected_speedup'), '.2f')}x " if proj else "")
            + f"| {cell(r['model_speedup'], '.2f')}x | {cell(r['accept_rate'], '.1%')} | {r['quality']:.3f} "
            f"| {cell(r.get('vs_line'), '+.3f')} | {cell(r['quality_retention'], '.1%')} | {r['adherence']:.2f} "
            f"| {r['wasted_drafter_calls']:.1f} "
            f"| {r['wasted_decodes']:.1f} |")
    t, rr = doc["targets"], doc["random_routing"]
    lines += ["", "- best speedup at >= 98 % of target-only quality: "
              f"{cell(t['best_speedup_at_98pct_quality'], '.2f')}"
              f" (goal {SPEEDUP_GOAL}x: {'met' if t['speedup_1_6x_at_98pct_quality'] else 'not met'})",
              f"- quality above draft-only at every tau: {'yes' if t['above_draft_only_at_every_tau'] else 'no'}",
              f"- reward routing above random routing at the matched accept rate: "
              f"{'yes' if t['reward_beats_random_at_matched_rate'] else 'no'} (random "
              f"{rr['quality']:.3f} at {cell(rr['accept_rate'], '.1%')}; "
              f"the tau sweep at that rate {cell(rr.get('reward_quality_at_this_rate'), '.3f')})"]
    if proj:
        lines.append(f"- projected at {proj['config']}: each method's counted work (model calls, commits, decoded "
                     "latent frames, scored pixel frames) priced with that configuration's cost table, "
                     f"target-only's price over the method's; the table's source: {proj['source']}")
    lines += ["", "Seams: the mean absolute pixel change across the block boundaries of the clips, by where the "
              "two blocks came from (boundaries counted in brackets), and within blocks.", "",
              "| method | " + " | ".join(SEAMS) + " |", "|---|" + "---|" * len(SEAMS)]
    for r in rows:
        seams = r.get("seams", {})
        lines.append(f"| {r['name']} | " + " | ".join(
            f"{seams[k]['mean_change']:.4f} ({seams[k]['count']})" if k in seams else "-" for k in SEAMS) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    from accelframe_bench import charts
    from accelframe_bench.reports import write_tables

    written = write_tables(doc, out, markdown)
    target, draft = doc["target_only"], doc["draft_only"]
    routed = [(r, f"tau {r['tau']:.2f}") for r in doc["points"]] + [(doc["random_routing"], "random")]
    routed += [(m, f"mean {m['tau']:.2f}") for m in doc["mean_aggregation"]]
    routed += [(m, f"emitted {m['tau']:.2f}") for m in doc.get("emitted_context", [])]
    pts = [(target["speedup"], target["quality"], "target"), (draft["speedup"], draft["quality"], "draft")]
    pts += [(r["speedup"], r["quality"], label) for r, label in routed]
    written.append(charts.scatter(out / "pareto.png", pts, xlabel="speedup", ylabel="world quality"))
    line = ((0.0, target["quality"]), (1.0, draft["quality"]), "the straight line: target-only to draft-only")
    pts = [(0.0, target["quality"], "target"), (1.0, draft["quality"], "draft")]
    pts += [(r["accept_rate"], r["quality"], label) for r, label in routed if r["accept_rate"] is not None]
    written.append(charts.scatter(out / "accept.png", pts, xlabel="accept rate", ylabel="world quality",
                                  segment=line))
    return written


OUTPUTS = ("results.json", "results.md", "pareto.png", "accept.png")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=24, help="held-out prompts (default: 24)")
    p.add_argument("--quick", action="store_true",
                   help="2 prompts, one calibrated tau, one mean-aggregation row: under a minute on 2 CPU cores")
    p.add_argument("--taus", default=None, metavar="LIST",
                   help="comma-separated thresholds instead of the calibrated ones (the first is the operating "
                        "point)")
    p.add_argument("--calibration-prompts", type=int, default=None, metavar="N",
                   help="training prompts the taus are calibrated on (default: 8; --quick: 1)")
    p.add_argument("--project", default=None, metavar="NAME",
                   help="price each method's counted work with the cost table of this configuration and report "
                        f"the speedup projected there ({PROJECT_HELP}); 'none': no projection (default: {DEFAULT_PROJECT}, the "
                        "SDVG paper's 14B target with its 1.3B drafter)")
    p.add_argument("--decoder", choices=DECODERS, default="vae",
                   help="what decodes latents: the world VAE's decoder (default) or its tiny decoder (TAEHV's shape, "
                        "as real-time deployments decode)")
    p.add_argument("--decode-worker", action="store_true",
                   help="every method decodes (and scores drafts) on a worker thread beside the denoising")
    p.add_argument("--scorer", default=DEFAULT_SCORER, metavar="NAME",
                   help=f"the registered scorer SDVG routes with, taus calibrated on its scores (default: "
                        f"{DEFAULT_SCORER}; world-quality: the world's own measure on each draft, a reference "
                        "for reward routers)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    p.add_argument("--out", default="bench-block", metavar="DIR",
                   help="folder for results.json, results.md, pareto.png and accept.png (default: bench-block)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.add_argument("--overwrite", dest="force", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _taus(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError("bench block", "--taus", text, "comma-separated numbers, e.g. 0.2,-0.3") from None
    if not out or any(t != t for t in out):
        raise ConfigError("bench block", "--taus", text, "at least one number, none NaN")
    return out


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe_bench.hooks import or_default
    from accelframe_bench.reports import fresh_out, report
    from accelframe_bench.costs import DEFAULT_PROJECT, cost_table

    if args.calibration_prompts is not None and args.calibration_prompts < 1:
        raise ConfigError("bench block", "--calibration-prompts", args.calibration_prompts, "an int >= 1")
    taus = _taus(args.taus)
    project = getattr(args, "project", None)
    table = cost_table(DEFAULT_PROJECT if project is None else project, "bench block")
    out = Path(args.out)
    hooks = or_default(hooks)  # built once: the scorer check and every pipeline of the run share it
    check_scorer(args.scorer, hooks)
    fresh_out("bench block", out, OUTPUTS, args.force)
    n = 2 if args.quick else args.prompts
    doc = run_bench(n=n, seed=args.seed, quick=args.quick, taus=taus,
                    calibration_prompts=args.calibration_prompts, quiet=args.json, hooks=hooks, table=table,
                    decoder=args.decoder, decode_worker=args.decode_worker, scorer=args.scorer)
    return report(doc, out, write_outputs, markdown, args.json)


__all__ = ["ACCEPT_TARGETS", "DEFAULT_SCORER", "Method", "Models", "SEAMS", "calibrate_taus", "check_scorer",
           "configure", "draft_scores", "interpolate", "markdown", "methods", "routed_scores", "run", "run_bench",
           "seam_changes", "work_of", "write_outputs"]
