"""``accelframe tune``: the fastest stack within a quality budget, found on calibration prompts,
written as a stack file and checked on held-out prompts.

    accelframe tune --adapter self-forcing:decoder=tiny \\
        --drafter self-forcing:size=world-drafter,decoder=tiny --budget "retention>=0.97,psnr>=30"

**The space.** Every combination of one choice per level (:func:`space`):

- step: none, or one step policy at one setting (:data:`STEP_CHOICES`: TaylorSeer every 2 or 3
  calls, SCOPE at its adapter's preset with the bound H = ``max_skip`` 3, 5 or 8, TeaCache,
  reuse-only and FlowCache at a slow and a fast threshold);
- block (with ``--drafter``): none, or SDVG with the worst-frame (``min``) or ``mean`` aggregation
  at the taus that accept :data:`ACCEPT_RATES` of the drafts on the calibration prompts (the
  quantiles of the drafter's scores there, as ``bench block`` calibrates);
- stream: none (``pipe.generate``), or the stream batch (``pipe.stream(..., stream_batch=True)``,
  one text-to-video stream whose frames have all arrived, as ``bench stack`` runs it) with chunks
  of 1 unit or, with ``fixed-batch``, 2 units.

Choices the adapter cannot run are left out before any model call (a policy whose requirements
the adapter lacks, the stream batch where the stream loop refuses the stack); ``--levels`` and
``--exclude`` narrow the space. The baseline (the target alone, sequential) is measured beside
every candidate, on the same prompts and seeds, interleaved prompt by prompt, and is a candidate
itself: when nothing faster keeps the budget, it is the answer.

A candidate whose every clip equals the target alone's, bit for bit, computed what the target
computes: it saves nothing, whatever speed the machine's noise shows, so it leaves the race at that
rung (``rungs[].exact`` lists them). Of the last rung's candidates within the budget, those within
:data:`MIN_GAIN` of the best objective are the same speed as far as the machine can tell; the one
with the widest margin inside the budget (each bound's margin as a fraction of its value) is chosen.
A stack is chosen over the target alone only when it is more than :data:`MIN_GAIN` faster (with
``--objective speed``).

**The search: successive halving.** Rung 0 runs every candidate on short videos
(:data:`SHORT_FRAMES` latent frames); each later rung runs the survivors on full-length videos
(``--latent-frames``) and more calibration prompts, up to ``--prompts``. After a rung, the
candidates whose measured metrics keep the budget loosened by :data:`SLACK` (a cheap run is a
noisy estimate) are ranked by the objective and the best third go on (at least
:data:`MIN_KEEP`). A measurement is one (candidate, prompt, length), kept in the log; a survivor
reuses its earlier prompts' measurements.

**Metrics** over a rung's prompts: ``speedup`` (the baseline's mean wall time per video over the
candidate's, decoding included), ``fps`` (pixel frames per second), ``ttff`` (seconds to the first
emitted frame), ``quality`` (the adapter's world quality, mean), ``retention`` (its mean over the
baseline's), ``psnr`` (against the baseline's frames, the mean over the clips that differ, as
``bench step`` and ``bench stack`` report it: ``inf`` when every clip is equal) and ``ssim`` (mean). ``--objective``: ``speed`` (the
largest speedup), ``fps`` (the largest), ``ttff`` (the smallest).

**Outputs.** The Pareto front of the last rung (objective against each budgeted metric), the
chosen config written as a stack file (``--out``) with the measurement in its comment, and its
check on ``--heldout`` held-out prompts against the baseline: whether every bound held there, and
by how much each missed. ``--json`` prints ``{"chosen": {...}, "front": [...], "heldout": {...},
"rungs": [...], "setup": {...}}``.

**The log** (``--log``, default ``OUT.log.jsonl``): a header (the setup) and one line per
measurement. ``--resume`` reads it and measures only what is missing; a log of another setup is
refused. Timings of a resumed run come from two processes: ratios stay per prompt-interleaved run
only within each process.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import attrs
import torch

from accelframe.errors import AccelframeError, ConfigError

OWNER = "accelframe tune"
METRICS = {  # budgetable metric: what it needs of the adapter
    "retention": "quality", "quality": "quality", "psnr": "frames", "ssim": "frames",
}
OBJECTIVES = ("speed", "fps", "ttff")
LEVELS = ("step", "block", "stream")
SHORT_FRAMES = 9  # latent frames of rung 0: 3 blocks of the world's loops
LATENT_FRAMES = 27
SLACK = {"retention": 0.02, "quality": 0.02, "psnr": 2.0, "ssim": 0.02}  # loosened bounds before the last rung
ETA = 3  # a rung keeps the best third
MIN_GAIN = 1.03  # a stack must beat the target alone by more than this (timing noise) to be chosen over it
MIN_KEEP = 3
ACCEPT_RATES = (0.1, 0.3, 0.5, 0.73)
QUICK_ACCEPT_RATES = (0.1, 0.5)
SCOPE_PRESET = {"skyreels-v2-df": "skyreels-v2", "magi-1": "magi-1", "self-forcing": "magi-1",
                "krea-realtime": "magi-1"}  # the preset each loop's benches run (docs/policies.md)
STEP_CHOICES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("taylorseer", {"interval": 2}), ("taylorseer", {"interval": 3}),
    ("scope", {"max_skip": 3}), ("scope", {"max_skip": 5}), ("scope", {"max_skip": 8}),
    ("teacache", {"threshold": 0.05}), ("teacache", {"threshold": 0.08}),
    ("first-block-cache", {"threshold": 0.05}), ("first-block-cache", {"threshold": 0.1}),
    ("flowcache", {"threshold": 0.3, "warmup": 1}), ("flowcache", {"threshold": 0.8, "warmup": 1}),
)
QUICK_STEP_CHOICES = STEP_CHOICES[:3]
STREAM_CHOICES: tuple[dict[str, Any], ...] = ({"chunk_units": 1}, {"chunk_units": 2})


# ---- budgets -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Bound:
    """One bound of a budget: ``metric op value`` (``psnr>=30``)."""

    metric: str
    op: str
    value: float

    def holds(self, measured: float | None, slack: float = 0.0) -> bool:
        if measured is None or math.isnan(measured):
            return False
        if self.op in (">=", ">"):
            v = self.value - slack
            return measured >= v if self.op == ">=" else measured > v
        v = self.value + slack
        return measured <= v if self.op == "<=" else measured < v

    def margin(self, measured: float | None) -> float | None:
        """How far ``measured`` is inside the bound (negative: by how much it missed)."""
        if measured is None:
            return None
        return measured - self.value if self.op in (">=", ">") else self.value - measured

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


_BOUND = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_budget(texts: Sequence[str]) -> list[Bound]:
    """``["retention>=0.97,psnr>=30", ...]`` into bounds; a typed error names what cannot be read."""
    from accelframe.cli import split_top_level
    from accelframe.errors import did_you_mean

    bounds = []
    for text in texts:
        for part in split_top_level(text):
            if not part.strip():
                continue
            m = _BOUND.match(part)
            if m is None:
                raise ConfigError(OWNER, "--budget", part, "METRIC>=NUMBER or METRIC<=NUMBER (also > and <), "
                                  "comma-separated, with METRIC one of " + ", ".join(METRICS))
            metric, op, value = m.group(1).lower(), m.group(2), float(m.group(3))
            if metric not in METRICS:
                raise ConfigError(OWNER, "--budget", part, did_you_mean(metric, list(METRICS), "metrics"))
            bounds.append(Bound(metric=metric, op=op, value=value))
    if not bounds:
        raise ConfigError(OWNER, "--budget", list(texts), "at least one bound, e.g. retention>=0.97 or psnr>=30")
    return bounds


def holds(bounds: Iterable[Bound], metrics: dict[str, Any], *, slack: bool = False) -> bool:
    return all(b.holds(metrics.get(b.metric), SLACK.get(b.metric, 0.0) if slack else 0.0) for b in bounds)


# ---- the space ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Candidate:
    """One stack of the space: a step policy, a block policy, a stream runtime (each may be none)."""

    step: tuple[str, dict[str, Any]] | None = None
    block: tuple[str, dict[str, Any]] | None = None  # sdvg with its calibrated tau
    accept: float | None = None  # the accept rate its tau was calibrated to (for names)
    stream: dict[str, Any] | None = None  # {"chunk_units": k}: the stream batch with chunks of k units

    @property
    def name(self) -> str:
        parts = []
        if self.step is not None:
            n, kw = self.step
            parts.append(f"{n}({', '.join(f'{k}={v}' for k, v in kw.items() if k != 'applies_to')})")
        if self.block is not None:
            agg = self.block[1].get("aggregation", "min")
            parts.append(f"sdvg({agg}, accept {self.accept:.0%} on calibration)" if self.accept is not None
                         else f"sdvg({agg}, tau {self.block[1].get('tau', -0.7):g})")
        if self.stream is not None:
            parts.append(f"stream batch (chunk {self.stream['chunk_units']})")
        return " + ".join(parts) or "baseline"

    @property
    def key(self) -> str:
        """Stable across processes: the log's name for this candidate."""
        return json.dumps([self.step, self.block, self.stream], sort_keys=True, default=float)

    @property
    def levels(self) -> list[str]:
        return [lv for lv, v in (("step", self.step), ("block", self.block), ("stream", self.stream)) if v is not None]

    def policies(self) -> list[tuple[str, dict[str, Any]]]:
        out = [p for p in (self.step, self.block) if p is not None]
        if self.stream is not None and self.stream["chunk_units"] > 1:
            out.append(("fixed-batch", {"chunk_units": self.stream["chunk_units"]}))
        return out


BASELINE = Candidate()


def step_choices(adapter: str, quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """The step level's settings for ``adapter`` (SCOPE at the preset its benches run)."""
    out = []
    for name, kw in (QUICK_STEP_CHOICES if quick else STEP_CHOICES):
        if name == "scope" and adapter in SCOPE_PRESET:
            kw = {"preset": SCOPE_PRESET[adapter], **kw}
        out.append((name, {**kw, "applies_to": "both"}))
    return out


def space(adapter: str, *, levels: Sequence[str], drafter: bool, taus: dict[tuple[str, float], float],
          quick: bool, exclude: Sequence[str] = ()) -> list[Candidate]:
    """Every candidate (the baseline first), before validation against the adapter."""
    steps: list[Any] = [None] + ([c for c in step_choices(adapter, quick) if c[0] not in exclude]
                                 if "step" in levels else [])
    blocks: list[Any] = [(None, None)]
    if "block" in levels and drafter and "sdvg" not in exclude:
        blocks += [(("sdvg", {"tau": tau, "aggregation": agg}), rate) for (agg, rate), tau in taus.items()]
    streams: list[Any] = [None] + (list(STREAM_CHOICES[:1] if quick else STREAM_CHOICES)
                                   if "stream" in levels and "stream-batch" not in exclude else [])
    return [Candidate(step=s, block=b, accept=rate, stream=st) for s in steps for b, rate in blocks for st in streams]


# ---- running -----------------------------------------------------------------------------------


@attrs.define
class Models:
    """The adapters every candidate shares (loaded once) and what builds their pipelines."""

    hooks: Any
    adapter: str
    adapter_settings: dict[str, Any]
    target: Any
    drafter_name: str | None
    drafter_settings: dict[str, Any]
    drafter: Any
    decode_worker: bool

    def pipeline(self, cand: Candidate) -> Any:
        from accelframe.pipeline import Pipeline

        pipe = Pipeline(self.target, drafter=self.drafter if cand.block is not None else None, hooks=self.hooks,
                        trace=False, decode_worker=self.decode_worker)
        try:
            for name, kw in cand.policies():
                pipe.use(name, **kw)
        except BaseException:
            pipe.close()
            raise
        return pipe

    def config(self, cand: Candidate) -> Any:
        """The candidate as a stack file's config (registered names and their settings)."""
        from accelframe.stackfile import PolicyEntry, StackConfig, StreamOptions

        drafted = cand.block is not None
        return StackConfig(adapter=self.adapter, adapter_settings=self.adapter_settings,
                           drafter=self.drafter_name if drafted else None,
                           drafter_settings=self.drafter_settings if drafted else {},
                           decode_worker=self.decode_worker,
                           policies=[PolicyEntry(name=n, settings=kw) for n, kw in cand.policies()],
                           stream=StreamOptions(stream_batch=True) if cand.stream is not None else None)


def build(models: Models, cand: Candidate) -> tuple[Any, str | None]:
    """``cand``'s pipeline, or None and why it cannot run on these adapters (its pipeline's or the
    stream loop's own validation, which runs no model)."""
    from accelframe.streaming import StreamLoop
    from accelframe_bench.stack import source

    try:
        pipe = models.pipeline(cand)
    except AccelframeError as err:  # an unknown name, a refused setting, an incompatible stack
        return None, str(err)
    if cand.stream is not None:
        try:
            StreamLoop(pipe, [source(models.target, "a red circle moves left on a blue background", 0, 3)],
                       stream_batch=True)
        except AccelframeError as err:
            pipe.close()
            return None, str(err)
    return pipe, None


def run_video(pipe: Any, cand: Candidate, prompt: str, seed: int, frames: int) -> tuple[torch.Tensor, float, float]:
    """One video: its decoded frames ``[T, 3, H, W]``, wall seconds and seconds to its first frame."""
    from accelframe_bench.stack import run_video as one_video

    video, wall, ttff, _ = one_video(pipe, stream=cand.stream is not None, prompt=prompt, seed=seed, frames=frames)
    return video, wall, ttff


@attrs.define
class Log:
    """The search's measurements, one JSON line each after a header, appended as they are made."""

    path: Path | None  # None: kept in memory only (the held-out check)
    records: dict[tuple[str, int, int], dict[str, Any]] = attrs.field(factory=dict)

    @classmethod
    def open(cls, path: Path, setup: dict[str, Any], *, resume: bool, force: bool) -> Log:
        log = cls(path)
        if path.exists() and resume:
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            header = lines[0] if lines else {}
            if header.get("setup") != setup:
                differ = sorted(k for k in set(setup) | set(header.get("setup", {}))
                                if setup.get(k) != header.get("setup", {}).get(k))
                raise ConfigError(OWNER, "--resume", str(path), "a log of this same setup; it differs in "
                                  + ", ".join(differ) + " (or leave --resume out, with --force, to start afresh)")
            for rec in lines[1:]:
                log.records[(rec["candidate"], rec["prompt"], rec["frames"])] = rec
            return log
        if path.exists() and not force:
            raise ConfigError(OWNER, "--log", str(path), "a path that does not exist yet (--resume to continue "
                              "that search, or --force to start afresh)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"setup": setup}) + "\n")
        return log

    def get(self, cand: Candidate, prompt: int, frames: int) -> dict[str, Any] | None:
        return self.records.get((cand.key, prompt, frames))

    def add(self, rec: dict[str, Any]) -> None:
        self.records[(rec["candidate"], rec["prompt"], rec["frames"])] = rec
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


def measure(models: Models, pipes: dict[str, Any], cands: list[Candidate], prompts: list[tuple[str, int]],
            indices: Sequence[int], frames: int, log: Log, bar: Any) -> dict[str, list[dict[str, Any]]]:
    """Every candidate's records, and the baseline's, on ``prompts[i]`` for ``i`` in ``indices`` at
    ``frames`` latent frames; on each prompt the baseline runs first (the others' PSNR and SSIM are
    against its frames), then the others in order. What the log holds is not measured again (the
    baseline's video is made again when a candidate still needs it: same seed, same bits)."""
    from accelframe.adapter import QualityMeter, feature
    from accelframe.metrics import ssim

    meter = feature(models.target, QualityMeter)
    others = [c for c in cands if c != BASELINE]
    out: dict[str, list[dict[str, Any]]] = {c.key: [] for c in [BASELINE, *others]}

    def record(c: Candidate, i: int, video: torch.Tensor, wall: float, ttff: float, base: torch.Tensor) -> dict:
        q = meter.measure_quality(video[None], [prompts[i][0]])[0]["quality"] if meter is not None else None
        rec = {"candidate": c.key, "name": c.name, "prompt": i, "frames": frames, "wall_s": wall, "ttff_s": ttff,
               "pixel_frames": int(video.shape[0]), "quality": q,
               "mse": float(((video.double() - base.double()) ** 2).mean()), "ssim": ssim(video, base)}
        log.add(rec)
        return rec

    for i in indices:
        prompt, seed = prompts[i]
        base_rec = log.get(BASELINE, i, frames)
        missing = [c for c in others if log.get(c, i, frames) is None]
        base_video = None
        if base_rec is None or missing:
            base_video, wall, ttff = run_video(pipes[BASELINE.key], BASELINE, prompt, seed, frames)
            if base_rec is None:
                base_rec = record(BASELINE, i, base_video, wall, ttff, base_video)
        out[BASELINE.key].append(base_rec)
        if BASELINE in cands:
            bar.update(1)
        for c in others:
            rec = log.get(c, i, frames)
            if rec is None:
                video, wall, ttff = run_video(pipes[c.key], c, prompt, seed, frames)
                rec = record(c, i, video, wall, ttff, base_video)
            out[c.key].append(rec)
            bar.update(1)
    return out


def summarise(recs: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """A candidate's metrics over its records against the baseline's on the same prompts."""
    wall = statistics.fmean(r["wall_s"] for r in recs)
    b_wall = statistics.fmean(r["wall_s"] for r in base)
    qs, bqs = [r["quality"] for r in recs], [r["quality"] for r in base]
    quality = statistics.fmean(qs) if None not in qs else None
    b_quality = statistics.fmean(bqs) if None not in bqs else None
    # PSNR as the benches report it: the mean over the clips that differ (an equal clip's is infinite)
    finite = [10 * math.log10(1.0 / r["mse"]) for r in recs if r["mse"] > 0]
    return {"speedup": b_wall / wall, "time_s": wall, "fps": sum(r["pixel_frames"] for r in recs) / sum(
        r["wall_s"] for r in recs), "ttff": statistics.fmean(r["ttff_s"] for r in recs),
        "quality": quality, "retention": quality / b_quality if quality is not None and b_quality else None,
        "psnr": statistics.fmean(finite) if finite else math.inf, "ssim": statistics.fmean(r["ssim"] for r in recs),
        "prompts": len(recs)}


def objective_value(metrics: dict[str, Any], objective: str) -> float:
    """Larger is better: speedup, fps, or minus the seconds to the first frame."""
    return {"speed": metrics["speedup"], "fps": metrics["fps"], "ttff": -metrics["ttff"]}[objective]


def pareto(rows: list[dict[str, Any]], objective: str, bounds: list[Bound]) -> list[dict[str, Any]]:
    """Rows no other row beats on the objective and every budgeted metric at once (each in the
    direction its bound wants), best objective first."""
    def better(a: dict[str, Any], b: dict[str, Any]) -> bool:  # a dominates b
        pairs = [(objective_value(a["metrics"], objective), objective_value(b["metrics"], objective))]
        for bd in bounds:
            x, y = a["metrics"].get(bd.metric), b["metrics"].get(bd.metric)
            if x is None or y is None:
                return False
            pairs.append((x, y) if bd.op in (">=", ">") else (-x, -y))
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    front = [r for r in rows if not any(better(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: -objective_value(r["metrics"], objective))


def relative_margin(bounds: list[Bound], metrics: dict[str, Any]) -> float:
    """The smallest margin of ``metrics`` inside the bounds, each as a fraction of its bound's value
    (an exact match's infinite PSNR: infinite)."""
    out = math.inf
    for b in bounds:
        m = b.margin(metrics.get(b.metric))
        if m is None:
            return -math.inf
        out = min(out, m / max(abs(b.value), 1e-9))
    return out


def choose(ranked: list[dict[str, Any]], bounds: list[Bound], objective: str) -> dict[str, Any]:
    """The answer among the candidates within budget, ``ranked`` best objective first: of those within
    :data:`MIN_GAIN` of the best (the same speed, as far as this machine can tell), the one with the
    widest margin inside the budget, the likeliest to keep it on prompts it was not chosen on."""
    best = objective_value(ranked[0]["metrics"], objective)

    def close(x: dict[str, Any]) -> bool:
        v = objective_value(x["metrics"], objective)
        return v >= best / MIN_GAIN if best > 0 else v >= best * MIN_GAIN

    contenders = [x for x in ranked if close(x)]
    return max(contenders, key=lambda x: (relative_margin(bounds, x["metrics"]),
                                          objective_value(x["metrics"], objective)))


def rungs(n_prompts: int, frames: int, quick: bool) -> list[tuple[int, int]]:
    """(prompts, latent frames) per rung: short videos on 1 (quick) or 2 prompts first, then full
    length on doubling prompts up to ``n_prompts``."""
    k = min(1 if quick else 2, n_prompts)
    out = [(k, min(SHORT_FRAMES, frames))]
    while k < n_prompts:
        k = min(2 * k, n_prompts)
        out.append((k, frames))
    if out[-1][1] != frames:
        out.append((k, frames))
    return out


# ---- the command -------------------------------------------------------------------------------


def _spec(text: str | None, flag: str) -> tuple[str, dict[str, Any]] | None:
    from accelframe.cli import parse_policy

    if text is None:
        return None
    try:
        return parse_policy(text)
    except ConfigError as exc:
        raise ConfigError(OWNER, flag, text, "NAME or NAME:KEY=VALUE,KEY=VALUE (" + exc.allowed + ")") from None


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that can be checked before a model is loaded; returns the parsed parts."""
    bounds = parse_budget(args.budget)
    if args.objective not in OBJECTIVES:
        raise ConfigError(OWNER, "--objective", args.objective, "one of " + ", ".join(OBJECTIVES))
    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    for lv in levels:
        if lv not in LEVELS:
            raise ConfigError(OWNER, "--levels", args.levels, "comma-separated levels among " + ", ".join(LEVELS))
    for name, lo in (("prompts", 1), ("heldout", 0), ("latent_frames", 3)):
        value = getattr(args, name)
        if not isinstance(value, int) or value < lo:
            raise ConfigError(OWNER, "--" + name.replace("_", "-"), value, f"an int >= {lo}")
    adapter = _spec(args.adapter, "--adapter")
    drafter = _spec(args.drafter, "--drafter")
    if "block" in levels and drafter is None and args.levels != ",".join(LEVELS):
        raise ConfigError(OWNER, "--levels", args.levels, "no 'block' without --drafter (SDVG routes drafted units)")
    cfg = None
    if args.stack is not None:
        from accelframe import stackfile

        cfg = stackfile.load(args.stack)
        if cfg.adapter != adapter[0]:
            raise ConfigError(OWNER, "--stack", args.stack, f"a stack file for adapter {adapter[0]!r}: this one is "
                                                            f"for {cfg.adapter!r}")
    return {"bounds": bounds, "levels": levels, "adapter": adapter, "drafter": drafter, "stack": cfg}


def load_models(parsed: dict[str, Any], hooks: Any, decode_worker: bool) -> Models:
    from accelframe.pipeline import Pipeline

    (a_name, a_kw), d = parsed["adapter"], parsed["drafter"]
    pipe = Pipeline(a_name, adapter_kwargs=a_kw, hooks=hooks, drafter=d[0] if d else None,
                    drafter_kwargs=d[1] if d else None)
    return Models(hooks=hooks, adapter=a_name, adapter_settings=a_kw, target=pipe.adapter,
                  drafter_name=d[0] if d else None, drafter_settings=d[1] if d else {}, drafter=pipe.drafter,
                  decode_worker=decode_worker)


def check_metrics(models: Models, bounds: list[Bound]) -> None:
    """A budgeted metric the adapter cannot measure is an error before any model call."""
    from accelframe.adapter import Decoder, QualityMeter, feature

    from accelframe.cli import DEFAULT_PROMPT

    decodes = feature(models.target, Decoder) is not None
    meter = feature(models.target, QualityMeter)
    quality = False
    if meter is not None and decodes:  # a black clip of a world prompt: no model runs, only the measure
        h, w = models.target.pixel_size
        quality = meter.measure_quality(torch.zeros(1, 2, 3, h, w), [DEFAULT_PROMPT]) is not None
    for b in bounds:
        need = METRICS[b.metric]
        if not decodes:
            raise ConfigError(OWNER, "--budget", str(b), f"a metric adapter {models.adapter!r} can measure: it does "
                              "not decode to pixels, and every metric of tune compares decoded frames")
        if need == "quality" and not quality:
            raise ConfigError(OWNER, "--budget", str(b), f"psnr or ssim: adapter {models.adapter!r} has no world "
                              "quality measure (only the embedded world's models have one)")


def search(args: argparse.Namespace, hooks: Any = None) -> dict[str, Any]:
    from accelframe.progress import progress_bar
    from accelframe_adapters.world import clips
    from accelframe_bench.block import calibrate_taus, routed_scores
    from accelframe_bench.hooks import or_default

    parsed = check_args(args)
    bounds, levels = parsed["bounds"], parsed["levels"]
    quick = args.quick
    n_prompts = 2 if quick else args.prompts
    n_heldout = 2 if quick and args.heldout == 8 else args.heldout
    frames = args.latent_frames
    out = Path(args.out)
    from accelframe.outputs import check_output

    check_output(str(out), owner=OWNER, field="--out", force=args.force, suffixes=(".toml",))
    log_path = Path(args.log) if args.log else out.with_name(out.name + ".log.jsonl")
    hooks = or_default(hooks)
    models = load_models(parsed, hooks, args.decode_worker)
    check_metrics(models, bounds)

    rng = random.Random(args.seed)
    cal = [(s.prompt, rng.randrange(2**31)) for s in clips.sample_scenes(n_prompts, 3_000 + args.seed, split="train")]
    held = [(s.prompt, rng.randrange(2**31)) for s in clips.sample_scenes(n_heldout, 7_000 + args.seed, split="eval")]
    say = (lambda *a: None) if args.json else (lambda msg: print(f"accelframe tune: {msg}", file=sys.stderr, flush=True))

    taus: dict[tuple[str, float], float] = {}
    drafted = models.drafter is not None and "block" in levels and "sdvg" not in args.exclude
    if drafted:  # SDVG's taus from the drafter's scores on the calibration prompts (never held-out ones)
        say(f"calibrating SDVG's tau on {len(cal)} calibration prompts")
        cal_pipe = models.pipeline(Candidate(block=("sdvg", {"tau": math.inf})))
        cal_pipe.trace = True
        try:
            scores = routed_scores(cal_pipe, [p for p, _ in cal], [s for _, s in cal], frames)
        finally:
            cal_pipe.close()
        rates = QUICK_ACCEPT_RATES if quick else ACCEPT_RATES
        for agg in ("min",) if quick else ("min", "mean"):
            for rate, tau in calibrate_taus(scores, rates, agg).items():
                taus[(agg, rate)] = tau
    cands = space(models.adapter, levels=levels, drafter=drafted, taus=taus, quick=quick, exclude=args.exclude)
    if parsed["stack"] is not None:
        extra = _from_config(parsed["stack"])
        if extra.key not in {c.key for c in cands}:  # a stack the space already holds is measured once
            cands.append(extra)
    setup = {"adapter": args.adapter, "drafter": args.drafter, "levels": levels, "exclude": list(args.exclude),
             "prompts": [list(p) for p in cal], "latent_frames": frames, "quick": quick, "seed": args.seed,
             "decode_worker": args.decode_worker, "threads": torch.get_num_threads(),
             "taus": {f"{a}@{r}": t for (a, r), t in taus.items()}, "stack": args.stack}
    report = {**setup, "budget": [str(b) for b in bounds], "objective": args.objective, "log": str(log_path)}
    pipes: dict[str, Any] = {}
    refused = {}
    history = []
    try:
        for c in cands:
            pipe, why = build(models, c)
            if why is not None:
                refused[c.name] = why
            else:
                pipes[c.key] = pipe
        live = [c for c in cands if c.key in pipes]
        if len(live) <= 1:
            raise ConfigError(OWNER, "--levels", args.levels, "a search space with a candidate besides the baseline: "
                              f"every stack of levels {levels} was refused on adapter {models.adapter!r}"
                              + (f" ({next(iter(refused.values()))})" if refused else ""))
        log = Log.open(log_path, setup, resume=args.resume, force=args.force)
        schedule = rungs(n_prompts, frames, quick)
        alive = live
        for r, (k, length) in enumerate(schedule):
            last = r == len(schedule) - 1
            say(f"rung {r + 1}/{len(schedule)}: {len(alive)} candidates on {k} calibration prompt(s) of {length} "
                "latent frames")
            with progress_bar(total=len(alive) * k, desc=f"tune rung {r + 1}", unit="video", quiet=args.json) as bar:
                recs = measure(models, pipes, alive, cal, range(k), length, log, bar)
            base = recs[BASELINE.key]
            rows = [{"name": c.name, "candidate": c, "metrics": summarise(recs[c.key], base)} for c in alive]
            for row in rows:
                row["within"] = holds(bounds, row["metrics"], slack=not last)
                # every clip equal to the target alone's, bit for bit: it computed what the target computes, so
                # it saves nothing, and any speed it shows is the machine's noise (it is dropped from the race)
                row["exact"] = row["candidate"] != BASELINE and row["metrics"]["psnr"] == math.inf
            ranked = sorted([x for x in rows if x["within"] and not x["exact"]],
                            key=lambda x: -objective_value(x["metrics"], args.objective))
            if not ranked:  # not even the target alone keeps it (an absolute bound such as quality>=0.9)
                break
            keep = ranked[:max(math.ceil(len(alive) / ETA), MIN_KEEP)]
            history.append({"rung": r, "prompts": k, "latent_frames": length, "candidates": len(alive),
                            "exact": [x["name"] for x in rows if x["exact"]], "kept": [x["name"] for x in keep]})
            if not last:
                alive = [x["candidate"] for x in keep]
                if BASELINE not in alive:
                    alive.insert(0, BASELINE)
        front = pareto(rows, args.objective, bounds)
        if not ranked:
            base = next(x for x in rows if x["candidate"] == BASELINE)
            return {"chosen": None, "front": [_public(x) for x in front], "last_rung": [_public(x) for x in rows],
                    "heldout": None, "rungs": history,
                    "refused": refused, "candidates": len(live), "baseline": _public(base), "setup": report}
        chosen = choose(ranked, bounds, args.objective)
        base_row = next((x for x in ranked if x["candidate"] == BASELINE), None)
        if (base_row is not None and chosen is not base_row and args.objective == "speed"
                and chosen["metrics"]["speedup"] < MIN_GAIN):  # within the noise of the target alone
            chosen = base_row
        heldout = check_heldout(models, pipes, chosen["candidate"], held, frames, bounds, args.json)
    finally:
        for p in pipes.values():
            p.close()
    config = models.config(chosen["candidate"])
    m = chosen["metrics"]
    comment = (f"made by accelframe tune (budget {', '.join(map(str, bounds))}, objective {args.objective}):\n"
               f"{chosen['name']}: {m['speedup']:.2f}x on {m['prompts']} calibration prompts"
               + "".join(f", {b.metric} {_fmt(m.get(b.metric))}" for b in bounds)
               + (f"\nheld-out ({heldout['prompts']} prompts): budget "
                  f"{'held' if heldout['held'] else 'missed'}" if heldout else ""))
    from accelframe import stackfile

    stackfile.write(out, config, force=args.force, owner=OWNER, field="--out", comment=comment)

    return {"chosen": {**_public(chosen), "config": config.to_dict(), "out": str(out)},
            "front": [_public(x) for x in front], "last_rung": [_public(x) for x in rows], "heldout": heldout,
            "rungs": history, "refused": refused, "candidates": len(live),
            "setup": {**report, "heldout_prompts": [p for p, _ in held]}}


def _public(row: dict[str, Any]) -> dict[str, Any]:
    c = row["candidate"]
    return {"name": row["name"], "levels": c.levels, "policies": [{"name": n, **kw} for n, kw in c.policies()],
            "stream_batch": c.stream is not None, **{k: _json(v) for k, v in row["metrics"].items()}}


def _from_config(cfg: Any) -> Candidate:
    """A stack file's policies as a candidate of the space (its first step and block policy and its
    stream batch)."""
    step = block = None
    for p in cfg.policies:
        if p.name == "sdvg" and block is None:
            block = (p.name, dict(p.settings))
        elif step is None and p.name not in ("sdvg", "fixed-batch"):
            step = (p.name, dict(p.settings))
    chunk = next((p.settings.get("chunk_units", 1) for p in cfg.policies if p.name == "fixed-batch"), 1)
    stream = {"chunk_units": chunk} if cfg.stream is not None and cfg.stream.stream_batch else None
    return Candidate(step=step, block=block, stream=stream)


def check_heldout(models: Models, pipes: dict[str, Any], cand: Candidate, held: list[tuple[str, int]], frames: int,
                  bounds: list[Bound], quiet: bool) -> dict[str, Any] | None:
    """The chosen candidate against the baseline on held-out prompts: did every bound hold?"""
    from accelframe.progress import progress_bar

    if not held:
        return None
    cands = [BASELINE, cand] if cand != BASELINE else [BASELINE]
    with progress_bar(total=len(held) * len(cands), desc="tune held-out", unit="video", quiet=quiet) as bar:
        recs = measure(models, pipes, cands, held, range(len(held)), frames, Log(None), bar)
    m = summarise(recs[cand.key], recs[BASELINE.key])
    return {"held": holds(bounds, m), "prompts": len(held), **{k: _json(v) for k, v in m.items()},
            "bounds": [{"bound": str(b), "measured": _json(m.get(b.metric)), "held": b.holds(m.get(b.metric)),
                        "margin": _json(b.margin(m.get(b.metric)))} for b in bounds]}


def _json(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else ("inf" if v == math.inf else v)


def _fmt(v: Any) -> str:
    """A metric for a person: ``-`` for none, ``inf`` for an exact match (``_json`` writes it as a string)."""
    return "-" if v is None else ("inf" if v in (math.inf, "inf") else f"{v:.3f}")


def markdown(doc: dict[str, Any]) -> str:
    s = doc["setup"]
    metrics = [b.split(">")[0].split("<")[0] for b in s["budget"]]
    if doc["chosen"] is None:
        return "no stack keeps the budget\n"
    lines = [f"# accelframe tune: {s['adapter']}" + (f" with drafter {s['drafter']}" if s["drafter"] else "")
             + f", budget {', '.join(s['budget'])}, objective {s['objective']}", "",
             f"{doc['candidates']} candidates, {len(doc['rungs'])} rungs; the front of the last rung "
             f"({doc['rungs'][-1]['prompts']} calibration prompts):", "",
             "| stack | speedup | fps | ttff s | " + " | ".join(metrics) + " |",
             "|---|---|---|---|" + "---|" * len(metrics)]
    for r in doc["front"]:
        lines.append(f"| {r['name']} | {r['speedup']:.2f} | {r['fps']:.1f} | {r['ttff']:.3f} | "
                     + " | ".join(_fmt(r.get(m)) for m in metrics) + " |")
    c, h = doc["chosen"], doc["heldout"]
    lines += ["", f"chosen: {c['name']} ({c['speedup']:.2f}x on calibration prompts), written to {c['out']}"]
    if h is not None:
        verdict = "held" if h["held"] else "missed"
        lines.append(f"held-out ({h['prompts']} prompts): {h['speedup']:.2f}x; budget {verdict}: "
                     + "; ".join(f"{b['bound']} measured {_fmt(b['measured'])}"
                                 + ("" if b["held"] else f" (missed by {-b['margin']:.3f})") for b in h["bounds"]))
    return "\n".join(lines) + "\n"


EPILOG = """examples:
  accelframe tune --budget "retention>=0.97,psnr>=30" --quick
  accelframe tune --adapter skyreels-v2-df --budget "psnr>=30" --out sky.toml --plot sky.png
  accelframe tune --adapter self-forcing:decoder=tiny --drafter self-forcing:size=world-drafter,decoder=tiny \\
      --decode-worker --budget "retention>=0.97" --out sf.toml
  accelframe tune ... --resume          # continue a search from its log (OUT.log.jsonl)

The search runs on calibration (training) prompts of the embedded world; the chosen stack is then
checked on held-out prompts. docs/tune.md has the space, the search and what it found.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Find the fastest stack of step, block and stream settings that keeps a quality budget, "
                     "write it as a stack file, and check the budget on held-out prompts.")
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--adapter", default="self-forcing", metavar="NAME[:K=V,...]",
                   help="the target: a registered adapter and its settings (default: self-forcing, the world's)")
    p.add_argument("--drafter", default=None, metavar="NAME[:K=V,...]",
                   help="a drafter for the block level (e.g. self-forcing:size=world-drafter); without one, SDVG is "
                        "left out")
    p.add_argument("--budget", action="append", required=True, metavar="EXPR",
                   help="bounds the chosen stack must keep, comma-separated or repeated: retention>=0.97, psnr>=30, "
                        "ssim>=0.95, quality>=0.7")
    p.add_argument("--objective", default="speed", choices=OBJECTIVES,
                   help="what to maximise within the budget: speed (speedup over the target alone), fps, or ttff "
                        "(the shortest time to the first frame) (default: speed)")
    p.add_argument("--levels", default=",".join(LEVELS), help="levels to search (default: step,block,stream)")
    p.add_argument("--exclude", action="append", default=[], metavar="POLICY",
                   help="leave a policy out of the space (a name, or stream-batch), repeatable")
    p.add_argument("--stack", default=None, metavar="FILE",
                   help="a stack file for the same adapter to add to the space as one more candidate")
    p.add_argument("--prompts", type=int, default=8, help="calibration (training) prompts of the last rung (default: 8)")
    p.add_argument("--heldout", type=int, default=8, help="held-out prompts the chosen stack is checked on (default: 8; "
                                                          "0: no check)")
    p.add_argument("--latent-frames", type=int, default=LATENT_FRAMES,
                   help=f"latent frames of a full-length video (default: {LATENT_FRAMES})")
    p.add_argument("--decode-worker", action="store_true",
                   help="every candidate, and the baseline, decodes on a worker thread (written into the stack file)")
    p.add_argument("--quick", action="store_true",
                   help="a small space (3 step settings, SDVG at 2 accept rates, the stream batch with chunks of 1), "
                        "2 calibration and 2 held-out prompts: a few minutes on one thread")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    p.add_argument("--out", default="tuned.toml", metavar="FILE", help="the stack file to write (default: tuned.toml)")
    p.add_argument("--log", default=None, metavar="FILE", help="the search's log (default: OUT.log.jsonl)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw the last rung's stacks (the objective against the first budgeted metric) there")
    p.add_argument("--resume", action="store_true", help="continue the search its log holds (same setup)")
    p.add_argument("--force", action="store_true", help="replace --out and start the log afresh")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def plot(doc: dict[str, Any], path: Path) -> Path:
    """The last rung's stacks: the objective against the first budgeted metric (an exact match's
    infinite PSNR on the top edge). The front, the chosen stack and the target alone are named; the
    rest are grey dots (a last rung of 36 names is unreadable)."""
    from accelframe_bench import charts

    s = doc["setup"]
    metric = re.split(r"[<>]", s["budget"][0])[0]
    x = {"speed": "speedup", "fps": "fps", "ttff": "ttff"}[s["objective"]]
    named = {r["name"] for r in doc.get("front", [])} | {"baseline"} | \
        ({doc["chosen"]["name"]} if doc.get("chosen") else set())
    pts = [(r[x], math.inf if r.get(metric) == "inf" else r.get(metric), r["name"] if r["name"] in named else "")
           for r in doc["last_rung"] if r.get(metric) is not None]
    return charts.scatter(path, pts, xlabel=f"{x} (against the target alone)" if x == "speedup" else x, ylabel=metric)


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe.outputs import check_output

    png = check_output(args.plot, owner=OWNER, field="--plot", force=args.force, suffixes=(".png",)) \
        if args.plot else None
    doc = search(args, hooks)
    if png is not None:
        plot(doc, png)  # written whole (charts.save)
    if args.json:
        print(json.dumps(doc, indent=1))
    elif doc["chosen"] is None:
        b = doc["baseline"]
        print(f"accelframe tune: no stack keeps the budget {', '.join(doc['setup']['budget'])}: not even the target "
              "alone (" + ", ".join(f"{k} {_fmt(b.get(k))}" for k in ("quality", "psnr", "ssim")) + "); nothing written",
              file=sys.stderr)
    else:
        print(markdown(doc))
    return 0 if doc["chosen"] is not None else 1


__all__ = ["Bound", "Candidate", "Log", "build", "check_args", "configure", "markdown", "pareto", "parse_budget", "rungs",
           "run", "search", "space", "summarise"]
