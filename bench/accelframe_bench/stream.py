"""``accelframe bench stream``: StreamDiffusionV2 on the tiny world, in one process, on the real clock.

Every run streams rendered world clips (video-to-video) through the ``self-forcing`` adapter with
the world's models and the policies ``slo-batch``, ``rolling-kv`` and ``motion-noise``, waiting
for frames as a live source would deliver them. Measured per run, in pixel frames: time to first
frame (``ttff_s``: arrival of frame 0 to its output), output ``fps`` (frames over the time from
the first arrival to the last output), ``jitter_ms`` (standard deviation of per-frame latency) and
``deadline_miss_rate`` (frames later than ``--deadline`` after their arrival), and for runs of at
most one clip the world's quality measure of the output (``world_quality``). The table sweeps:

- **offered load**: one stream at ``--loads`` fps (sequential chunks through the engine);
- **low latency**: one stream at ``--fps`` with units of one latent frame (``--block-frames 1`` of
  ``accelframe stream``): the first output needs one input frame instead of a 3-frame unit's nine;
- **streams**: 1 and 2 user streams at ``--fps``, sequential against stream batch (the denoising
  steps of consecutive chunks of every stream as one batched forward);
- **ranks**: the stream loop on 2 pipeline-parallel ranks (``pipe.stream(..., ranks=2)``, processes
  of one thread each, decoding included and spread over the ranks) against the same streams in one
  process of one thread, interleaved; the ratio of their wall times (see
  ``docs/pipeline-parallel.md``), unless ``--ranks 1``;
- **soak** (``--soak-seconds``): one stream at ``--fps`` for that long (a looped world clip), with
  the process's resident memory sampled at every batch and the deadline misses counted;
- **drift** (``--drift-seconds``): one text-to-video stream at ``--fps`` for that long (``rolling-kv``
  with sinks and RoPE reset, no ``motion-noise``), the world quality of every 10-second window
  measured as it completes (the frames are then dropped): the last window within 10 % of the first;
  beside it each window of the world's rendering of the prompt (a faithful stream, whose shape
  leaves the frame) and the stream's ratio to it, and the window's ``picture`` (the quality
  measure's parts that do not depend on where the shape is: blur, smudges and block seams), with
  the same goal on it (``drift_picture_within_10_percent``). ``--drift-prompts N`` streams the prompts of the
  next N - 1 seeds too, one after another on a virtual clock (nothing waits for real time; the
  windows are the real clock's while the machine keeps up, checked on the first prompt to three
  decimals), so a setting such as ``--sink-tau`` is judged on more than one prompt.

The headline keys of ``--json`` (``ttff_s``, ``fps``, ``jitter_ms``, ``deadline_miss_rate``) are
the one-stream run at ``--fps``. Written to ``--out``: results.json, results.md, load.png (and
drift.png with ``--drift-seconds``, drift-prompts.png and drift-picture.png with ``--drift-prompts``
above 1).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path
from typing import Any

from accelframe.errors import ConfigError

OUTPUTS = ("results.json", "results.md", "load.png", "drift.png", "drift-prompts.png", "drift-picture.png")
TTFF_GOAL = 0.5
MISS_GOAL = 0.01
RANK_GOAL = 1.8  # issue 22: 2 ranks of one core, decoding included
DRIFT_WINDOW_S = 10.0  # seconds of stream per quality window
DRIFT_GOAL = 0.10  # the last window's quality within this fraction of the first's
UNIT_PIXELS = 12  # pixel frames of one 3-latent unit after the first (1 + 4 (f - 1) .. 4 f per latent frame)


def _near(ratio: float | None) -> bool:
    """Whether a ratio of two window qualities is within :data:`DRIFT_GOAL` of 1 (None: no)."""
    return ratio is not None and abs(ratio - 1.0) <= DRIFT_GOAL


def _rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


WORLD_SOURCE = "world"  # the stream source the benched streams play


class Bench:
    """Loads the world's model once and runs streams on it."""

    def __init__(self, *, deadline: float, seed: int, hooks: Any = None, sink_tau: float | None = None) -> None:
        from accelframe.streaming import cli as stream_cli
        from accelframe_bench.hooks import or_default

        self.cli = stream_cli
        self.hooks = or_default(hooks)  # every stream's pipeline runs on it (build_pipeline(hooks_=))
        self.adapters: dict[int, Any] = {}
        self.adapter = self.adapter_for(3)
        self.deadline, self.seed = deadline, seed
        # rolling-kv's refresh threshold in every run (None: the stream command's)
        self.sink_tau = stream_cli.SINK_TAU if sink_tau is None else sink_tau
        from accelframe_adapters.world.clips import PIXEL_FRAMES

        self.clip_frames = PIXEL_FRAMES

    def adapter_for(self, block: int) -> Any:
        """The world's self-forcing adapter with ``block`` latent frames per unit (loaded once)."""
        if block not in self.adapters:
            from accelframe.pipeline import Pipeline

            self.adapters[block] = Pipeline(self.cli.ADAPTER, hooks=self.hooks, adapter_kwargs={
                "size": "world", "num_frame_per_block": block}).adapter
        return self.adapters[block]

    def sources(self, n: int, fps: float, frames: int) -> list[Any]:
        from accelframe.streaming.source import StreamSource

        # the world's clips, as `accelframe stream --source world` renders them: the source registered
        # by the adapters, looked up on the bench's manager
        world = self.cli.stream_source(WORLD_SOURCE, self.hooks.registry())
        return [StreamSource(id=f"s{i}", prompt=p,
                             frames=self.cli.source_clip(world, WORLD_SOURCE, p, self.seed + i, frames),
                             fps=fps, deadline_s=self.deadline, seed=self.seed + i)
                for i, p in enumerate(world.prompts(n, self.seed))]

    def run(self, *, streams: int, fps: float, frames: int, stream_batch: bool = False, block: int = 3,
            on_batch: Any = None) -> dict[str, Any]:
        from accelframe.streaming.source import RealClock

        pipe = self.cli.build_pipeline(hooks_=self.hooks, adapter=self.adapter_for(block), tau=self.sink_tau)
        measure = frames <= self.clip_frames  # world quality needs one unlooped clip
        sources = self.sources(streams, fps, frames)
        t0 = time.perf_counter()
        res = pipe.stream(sources, clock=RealClock(), stream_batch=stream_batch, keep_frames=measure,
                          on_batch=on_batch)
        wall = time.perf_counter() - t0
        slo = next(p.policy for p in pipe.stack if p.name == "slo-batch")
        pipe.close()
        doc = res.to_json()
        per = list(doc["streams"].values())
        chunks = sorted({e[1] for b in doc["batches"] for e in b["entries"]})
        return {
            "streams": streams, "offered_fps": fps, "frames_per_stream": frames, "stream_batch": stream_batch,
            "block_frames": block,
            "ttff_s": max(m["ttff_s"] for m in per),
            "fps": sum(m["fps"] for m in per) / len(per),
            "jitter_ms": max(m["jitter_ms"] for m in per),
            "deadline_miss_rate": sum(m["deadline_miss_rate"] * m["frames"] for m in per)
            / sum(m["frames"] for m in per),
            "mean_latency_s": sum(m["mean_latency_s"] for m in per) / len(per),
            "wall_s": wall, "batches": len(doc["batches"]), "chunk_frames": chunks,
            "unsustainable": slo.unsustainable_plans > 0,
            "latency_model": list(slo.model.coefficients()) if slo.model.ready else None,
            **(self.quality(res, sources, block) if measure else {"world_quality": None, "adherence": None}),
        }

    def quality(self, res: Any, sources: list[Any], block: int) -> dict[str, float]:
        """The world's quality measure of each stream's output, averaged over the streams."""
        from accelframe_adapters.world import clips
        from accelframe_adapters.world import quality as wq

        got = [wq.measure(res.outputs[s.id].frames, clips.parse_prompt(s.prompt), block=block) for s in sources]
        summary = wq.summarise(got)
        return {"world_quality": summary["quality"], "adherence": summary["adherence"]}

    def soak(self, *, seconds: float, fps: float, quiet: bool) -> dict[str, Any]:
        """One stream for ``seconds`` of input; the process's resident memory sampled every batch."""
        from accelframe.progress import progress_bar

        frames = int(seconds * fps)
        samples: list[dict[str, float]] = []
        t0 = time.perf_counter()
        with progress_bar(total=frames, desc="soak", unit="frame", quiet=quiet) as bar:
            def on_batch(record: dict[str, Any]) -> None:
                n = sum(record.get("emitted", {}).values())
                bar.update(n)
                samples.append({"t_s": time.perf_counter() - t0, "rss_mb": _rss_mb()})
            result = self.run(streams=1, fps=fps, frames=frames, on_batch=on_batch)
        rss = [s["rss_mb"] for s in samples]
        tenth = max(len(rss) // 10, 1)
        early, late = sum(rss[tenth:2 * tenth]) / tenth, sum(rss[-tenth:]) / tenth
        return {**result, "seconds": seconds, "rss_mb_early": early, "rss_mb_late": late,
                "rss_growth_mb": late - early, "rss_samples": samples[:: max(len(samples) // 60, 1)]}

    def drift(self, *, seconds: float, fps: float, quiet: bool,
              window_s: float = DRIFT_WINDOW_S, seed: int | None = None, clock: Any = None) -> dict[str, Any]:
        """One text-to-video stream of ``seconds`` at ``fps`` (the world's first prompt of ``seed``,
        default the bench's; on ``clock``, default the real one), its
        world quality per ``window_s`` window, scored as each window completes; no frames are kept.

        A window starting inside a 3-latent unit is scored from its first unit boundary on (at most 8
        frames dropped), so the quality measure's block-boundary term compares the stream's real
        boundaries in every window; frames past the last whole window are not scored. ``reference``:
        the same windows of the world's own rendering of the prompt (seed ``seed``), what a faithful
        stream would score (the world's shapes keep moving, so they leave the frame)."""
        import torch

        from accelframe.progress import progress_bar
        from accelframe.streaming.source import RealClock, StreamSource
        from accelframe_adapters.world import clips

        seed = self.seed if seed is None else seed
        adapter = self.adapter_for(3)
        world = self.cli.stream_source(WORLD_SOURCE, self.hooks.registry())
        prompt = list(world.prompts(1, seed))[0]
        scene = clips.parse_prompt(prompt)
        total, win = int(round(seconds * fps)), max(int(round(window_s * fps)), 2)
        pipe = self.cli.build_pipeline(hooks_=self.hooks, adapter=adapter, motion=False,  # t2v: no motion-noise
                                       tau=self.sink_tau)
        src = StreamSource(id="drift", prompt=prompt, num_frames=total, fps=fps, deadline_s=self.deadline,
                           seed=seed)
        pending: list[torch.Tensor] = []  # emitted chunks of the window being filled, each [F, 3, H, W]
        held = [0]  # pixel frames in pending
        windows: list[dict[str, Any]] = []

        def score(frames: torch.Tensor) -> None:  # frames [win, 3, H, W], the window's pixel frames
            k = len(windows)
            skip = -(k * win) % UNIT_PIXELS  # frames before the window's first unit boundary
            rec = adapter.measure_quality(frames[skip:][None], [prompt])[0]  # frames[None]: [1, T, 3, H, W]
            rendered = clips.render(scene, seed, frames=total, span=(k * win + skip, (k + 1) * win),
                                    height=frames.shape[2], width=frames.shape[3])  # [T, 3, H, W]
            ref = adapter.measure_quality(rendered[None], [prompt])[0]
            windows.append({"t_s": k * window_s, "quality": rec["quality"], "reference": ref["quality"],
                            "reference_picture": ref["picture"], "scored_frames": win - skip,
                            **{p: rec.get(p) for p in ("presence", "shape", "motion", "smoothness", "sharpness",
                                                       "background", "boundary", "purity", "picture",
                                                       "measured_direction")}})

        def on_frames(stream: str, frames: torch.Tensor) -> None:  # frames [F, 3, H, W]
            pending.append(frames.detach().float().cpu())
            held[0] += frames.shape[0]
            bar.update(frames.shape[0])
            while held[0] >= win:
                cat = torch.cat(pending)  # [held, 3, H, W]
                score(cat[:win])
                rest = cat[win:].clone()
                pending[:] = [rest] if rest.shape[0] else []
                held[0] = rest.shape[0]

        t0 = time.perf_counter()
        with progress_bar(total=total, desc=f"drift (seed {seed})", unit="frame", quiet=quiet) as bar:
            res = pipe.stream([src], clock=RealClock() if clock is None else clock, keep_frames=False,
                              on_frames=on_frames)
        pipe.close()
        m = res.to_json()["streams"]["drift"]
        q = [w["quality"] for w in windows]
        first, last = (q[0], q[-1]) if q else (None, None)
        ratio = last / first if q and first else None
        ref = [w["reference"] for w in windows]
        # against the rendering: where a faithful stream scores less (the shape has left), so may it
        near = [_near(a / b) for a, b in zip(q, ref) if b]
        # the position-free parts (blur, smudges, seams): the drift the stream's content does not explain
        pic = [w["picture"] for w in windows]
        pic_ratio = pic[-1] / pic[0] if pic and pic[0] else None
        return {"window_s": window_s, "quality": q, "first": first, "last": last, "last_over_first": ratio,
                "picture": pic, "picture_last_over_first": pic_ratio,
                "picture_within_10pct": _near(pic_ratio),
                "reference": ref, "reference_last_over_first": ref[-1] / ref[0] if ref and ref[0] else None,
                "last_over_reference": last / ref[-1] if q and ref[-1] else None,
                "windows_within_10pct_of_reference": sum(near) / len(near) if near else None,
                "within_10pct": _near(ratio), "prompt": prompt, "seed": seed,
                "clock": "real" if clock is None else "virtual", "seconds": seconds, "fps": fps,
                "frames": m["frames"], "windows": windows,
                "policies": ["slo-batch", "rolling-kv"],  # text-to-video: no motion-noise
                "rolling_kv_tau": self.sink_tau,
                "deadline_miss_rate": m["deadline_miss_rate"], "wall_s": time.perf_counter() - t0}

    def drift_prompts(self, first: dict[str, Any], n: int, *, seconds: float, fps: float, quiet: bool,
                      window_s: float = DRIFT_WINDOW_S) -> dict[str, Any]:
        """``first`` (the real-clock drift run of the bench's seed) and the prompts of the next ``n - 1``
        seeds, each streamed alike on a :class:`~accelframe.streaming.source.VirtualClock`: per prompt
        its windows against the rendering, and over the prompts how many the stream follows."""
        from accelframe.streaming.source import VirtualClock

        runs = [first] + [self.drift(seconds=seconds, fps=fps, quiet=quiet, window_s=window_s,
                                     seed=self.seed + k, clock=VirtualClock()) for k in range(1, n)]
        keys = ("seed", "prompt", "clock", "quality", "reference", "last_over_first", "last_over_reference",
                "windows_within_10pct_of_reference", "picture", "picture_last_over_first", "picture_within_10pct")
        per = [{k: r.get(k) for k in keys} for r in runs]
        near = [r["windows_within_10pct_of_reference"] for r in per
                if r["windows_within_10pct_of_reference"] is not None]
        return {"prompts": per,
                "mean_windows_within_10pct_of_reference": sum(near) / len(near) if near else None,
                "last_within_10pct_of_reference": sum(_near(r["last_over_reference"]) for r in per),
                "picture_within_10pct": sum(r["picture_within_10pct"] for r in per),
                "count": len(per)}


# the ranks comparison: the world's streams are short (27 latent frames, the positions its models
# were trained on), so a pipeline of 2 lanes (8 chunks of a stream in flight) would be mostly fill
# and drain; streams that start one after another keep it full, on a virtual clock (the same
# batches in both runs, nothing waits for real time)
RANK_STREAMS = 8
RANK_FRAMES = 105  # pixel frames per stream: the world's 27 latent frames
RANK_FPS = 1000.0  # a chunk's frames arrive within a batch of the virtual clock
RANK_BATCH_S = 0.01  # virtual seconds per batch
RANK_STAGGER_S = 0.06  # a stream starts every 6 batches


def ranks_ratio(quick: bool, *, ranks: int = 2, hooks: Any = None, repeats: int | None = None,
                partition: list[int] | None = None) -> dict[str, Any]:
    """The stream loop on ``ranks`` processes against one process, the same streams (``RANK_STREAMS``
    text-to-video streams starting one after another, fixed-batch (every stream with frames in each
    batch: a throughput run, no SLO), the stream batch), each run timed
    by its own ``pipe.stream`` wall clock, decoding included. Per repeat: one process, the ranks, one
    process again (the machine's load moves both; ``throughput_1`` is their mean); the headline is
    the median repeat by ratio. ``equal``: the ranks' frames against one process running the same
    ``lanes=ranks`` schedule, within 1e-5. Quick: one repeat, else three."""
    import tempfile

    import torch

    from accelframe_adapters.parallel import trial

    cfg: dict[str, Any] = {  # streams of the world's 27 latent frames, one starting every RANK_STAGGER_S
        "streams": [{"id": f"s{i}", "seed": i, "frames": RANK_FRAMES, "fps": RANK_FPS,
                     "start_s": RANK_STAGGER_S * i} for i in range(RANK_STREAMS)],
        "clock": {"batch_cost_s": RANK_BATCH_S}, "policies": [["fixed-batch", {"max_streams": RANK_STREAMS}]]}
    if partition is not None:
        cfg["partition"] = list(partition)
    pipe = trial.pipeline(cfg, hooks=hooks)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            trial.run({**cfg, "lanes": 1}, pipe=pipe)  # warm-up (not reported)
            ref = trial.run({**cfg, "lanes": ranks}, pipe=pipe)
            rows = []
            with tempfile.TemporaryDirectory(prefix="accelframe-ranks-") as tmp:
                for k in range(repeats or (1 if quick else 3)):
                    one = trial.run({**cfg, "lanes": 1}, pipe=pipe)
                    many, _ = trial.launch(cfg, ranks, Path(tmp) / f"rank0-{k}.pt")
                    again = trial.run({**cfg, "lanes": 1}, pipe=pipe)
                    if many["error"] is not None:
                        raise RuntimeError(f"the {ranks}-rank run failed: {many['error']}")
                    t1 = (one["wall_s"] + again["wall_s"]) / 2
                    rb = many.get("rebalance") or {}
                    rows.append({"wall_1_s": t1, "wall_ranks_s": many["wall_s"], "ratio": t1 / many["wall_s"],
                                 "partition_before": rb.get("partition_before"),
                                 "partition_after": rb.get("proposed") if rb.get("moved")
                                 else rb.get("partition_before"),
                                 "stage_times_s": rb.get("stage_times_s"), "overheads_s": rb.get("overheads_s"),
                                 "max_diff": max(float((many["frames"][k2] - f).abs().max())
                                                 for k2, f in ref["frames"].items())})
    finally:
        torch.set_num_threads(old)
    mid = sorted(rows, key=lambda r: r["ratio"])[len(rows) // 2]
    frames = RANK_STREAMS * RANK_FRAMES
    return {"throughput_1": frames / mid["wall_1_s"], "throughput_2": frames / mid["wall_ranks_s"],
            "ratio": mid["ratio"], "runs": rows, "equal": all(r["max_diff"] <= 1e-5 for r in rows),
            "max_diff": max(r["max_diff"] for r in rows), "ranks": ranks, "streams": RANK_STREAMS,
            "frames_per_stream": RANK_FRAMES, "unit": "pixel frames per second, decoding included",
            "partition": partition, "decode": "spread: stream k on rank k mod R", "threads_per_rank": 1,
            "load_avg_1min_before": load}


def run_bench(*, loads: list[float], fps: float, frames: int, deadline: float, seed: int, quick: bool,
              ranks: bool, soak_seconds: float, quiet: bool, hooks: Any = None, drift_seconds: float = 0.0,
              drift_window_s: float = DRIFT_WINDOW_S, sink_tau: float | None = None,
              drift_prompts: int = 1) -> dict[str, Any]:
    """The sweep's document. ``sink_tau``: rolling-kv's refresh threshold in every run (None: the
    stream command's, ``accelframe.streaming.cli.SINK_TAU``). ``hooks``: the plugin manager the
    streams run on (default: :func:`accelframe_bench.hooks.default_hooks`); the ranks comparison runs
    in processes of its own.
    ``drift_window_s``: the drift run's window (tests shorten it); ``drift_prompts``: how many
    prompts the drift streams (the first on the real clock, :meth:`Bench.drift_prompts`)."""
    from accelframe.progress import progress_bar

    bench = Bench(deadline=deadline, seed=seed, hooks=hooks, sink_tau=sink_tau)
    for block in (3, 1):  # warm-up (not reported)
        bench.run(streams=1, fps=fps, frames=bench.adapter_for(block).pixel_frames(6), block=block)
    plan = [("load", 1, f, False, 3) for f in loads] + [("low latency", 1, fps, False, 1)] + \
        [("streams", n, fps, sb, 3) for n in ((1, 2) if not quick else (2,)) for sb in (False, True)]
    rows: list[dict[str, Any]] = []
    with progress_bar(total=len(plan), desc="bench stream", unit="run", quiet=quiet) as bar:
        for kind, n, f, sb, block in plan:
            rows.append({"sweep": kind,
                         **bench.run(streams=n, fps=f, frames=frames, stream_batch=sb, block=block)})
            bar.update(1)
    head = next(r for r in rows if r["sweep"] == "load" and r["offered_fps"] == fps) if fps in loads else \
        bench.run(streams=1, fps=fps, frames=frames)
    doc: dict[str, Any] = {
        "ttff_s": head["ttff_s"], "fps": head["fps"], "jitter_ms": head["jitter_ms"],
        "deadline_miss_rate": head["deadline_miss_rate"],
        "setup": {"adapter": "self-forcing", "size": "world",
                  "policies": ["slo-batch", "rolling-kv", "motion-noise"],
                  "rolling_kv_tau": bench.sink_tau,
                  "deadline_s": deadline, "frames_per_stream": frames, "fps": fps, "seed": seed,
                  "threads": __import__("torch").get_num_threads(), "quick": quick},
        "runs": rows,
    }
    if ranks:
        doc["ranks"] = ranks_ratio(quick, hooks=hooks)
    if soak_seconds > 0:
        doc["soak"] = bench.soak(seconds=soak_seconds, fps=fps, quiet=quiet)
    if drift_seconds > 0:
        doc["drift"] = bench.drift(seconds=drift_seconds, fps=fps, quiet=quiet, window_s=drift_window_s)
        if drift_prompts > 1:
            doc["drift"]["across_prompts"] = bench.drift_prompts(doc["drift"], drift_prompts, seconds=drift_seconds,
                                                                 fps=fps, quiet=quiet, window_s=drift_window_s)
    doc["targets"] = targets(doc)
    return doc


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    low = next((r["ttff_s"] for r in doc["runs"] if r["sweep"] == "low latency"), None)
    out: dict[str, Any] = {"ttff_under_0_5_s": {
        "measured": doc["ttff_s"], "measured_low_latency": low,
        "met": doc["ttff_s"] < TTFF_GOAL, "met_low_latency": low is not None and low < TTFF_GOAL}}
    soak = doc.get("soak")
    if soak:
        out["soak_99_percent_deadlines"] = {"measured_miss_rate": soak["deadline_miss_rate"],
                                            "seconds": soak["seconds"],
                                            "met": soak["deadline_miss_rate"] <= MISS_GOAL
                                            and soak["seconds"] >= 300,
                                            "rss_growth_mb": soak["rss_growth_mb"]}
    drift = doc.get("drift")
    if drift:
        out["drift_within_10_percent"] = {"measured_last_over_first": drift["last_over_first"],
                                          "seconds": drift["seconds"],
                                          "met": drift["within_10pct"] and drift["seconds"] >= 300}
        if drift.get("picture_last_over_first") is not None:  # the same goal on the position-free parts
            out["drift_picture_within_10_percent"] = {
                "measured_last_over_first": drift["picture_last_over_first"], "seconds": drift["seconds"],
                "met": drift["picture_within_10pct"] and drift["seconds"] >= 300}
    if "ranks" in doc and doc["ranks"].get("ratio") is not None:
        out["two_ranks_1_8x_with_decode"] = {"measured": doc["ranks"]["ratio"],
                                             "met": doc["ranks"]["ratio"] >= RANK_GOAL}
    return out


def markdown(doc: dict[str, Any]) -> str:
    from accelframe_bench.reports import cell

    lines = ["# accelframe bench stream", "",
             f"world target, self-forcing, policies slo-batch + rolling-kv + motion-noise, deadline "
             f"{doc['setup']['deadline_s']} s, {doc['setup']['frames_per_stream']} frames per stream, "
             f"{doc['setup']['threads']} threads", "",
             "| sweep | streams | offered fps | block | stream batch | ttff s | fps | jitter ms | deadline miss "
             "| chunks | world quality |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(f"| {r['sweep']} | {r['streams']} | {r['offered_fps']:g} | {r['block_frames']} "
                     f"| {'yes' if r['stream_batch'] else 'no'} "
                     f"| {r['ttff_s']:.3f} | {r['fps']:.2f} | {r['jitter_ms']:.0f} "
                     f"| {100 * r['deadline_miss_rate']:.1f} % "
                     f"| {r['chunk_frames']}{' (unsustainable)' if r['unsustainable'] else ''} "
                     f"| {'-' if r.get('world_quality') is None else format(r['world_quality'], '.3f')} |")
    if "ranks" in doc:
        rk = doc["ranks"]
        lines += ["", f"ranks: 1 process {cell(rk.get('throughput_1'), '.1f')}, 2 ranks "
                      f"{cell(rk.get('throughput_2'), '.1f')} pixel frames/s (decoding included), "
                      f"ratio {cell(rk.get('ratio'), '.2f')}"]
    if "soak" in doc:
        s = doc["soak"]
        lines += ["", f"soak: {s['seconds']:g} s at {s['offered_fps']:g} fps, "
                      f"{100 * s['deadline_miss_rate']:.2f} % "
                      f"deadlines missed, resident memory {s['rss_mb_early']:.0f} -> {s['rss_mb_late']:.0f} MiB"]
    if "drift" in doc:
        d = doc["drift"]
        ratio = "-" if d["last_over_first"] is None else f"{d['last_over_first']:.3f}"
        tau = f", sink refresh tau {d['rolling_kv_tau']:g}" if "rolling_kv_tau" in d else ""
        lines += ["", f"drift: text-to-video ({' + '.join(d.get('policies', []))}{tau}), {d['seconds']:g} s at "
                      f"{d['fps']:g} fps, world quality per "
                      f"{d['window_s']:g}-second window (prompt {d['prompt']!r}): last / first {ratio} "
                      f"({'within' if d['within_10pct'] else 'not within'} 10 %); against the world's "
                      f"rendering of the prompt, last / rendered {cell(d.get('last_over_reference'), '.3f')}, "
                      f"windows within 10 % of it {cell(d.get('windows_within_10pct_of_reference'), '.0%')}; "
                      f"picture (blur, smudges, seams) last / first {cell(d.get('picture_last_over_first'), '.3f')}",
                  "", "| window start s | world quality | rendered prompt | stream / rendered | picture |",
                  "|---|---|---|---|---|"]
        lines += [f"| {w['t_s']:g} | {cell(w['quality'], '.3f')} | {cell(w.get('reference'), '.3f')} "
                  f"| {cell(w['quality'] / w['reference'] if w.get('reference') else None, '.3f')} "
                  f"| {cell(w.get('picture'), '.3f')} |" for w in d["windows"]]
        many = d.get("across_prompts")
        if many:
            lines += ["", f"drift on {many['count']} prompts (seeds {many['prompts'][0]['seed']} to "
                          f"{many['prompts'][-1]['seed']}; the first on the real clock, the others on a virtual "
                          f"one): last window within 10 % of the rendering's in {many['last_within_10pct_of_reference']} "
                          f"of {many['count']}, windows within 10 % of the rendering "
                          f"{cell(many['mean_windows_within_10pct_of_reference'], '.0%')} on average; picture's "
                          f"last window within 10 % of its first in {many['picture_within_10pct']} of {many['count']}",
                      "", "| seed | prompt | clock | first window | last window | last / rendered "
                      "| windows within 10 % of rendered | picture last / first |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {r['seed']} | {r['prompt']} | {r['clock']} | {cell(r['quality'][0] if r['quality'] else None, '.3f')} "
                      f"| {cell(r['quality'][-1] if r['quality'] else None, '.3f')} "
                      f"| {cell(r['last_over_reference'], '.3f')} "
                      f"| {cell(r['windows_within_10pct_of_reference'], '.0%')} "
                      f"| {cell(r.get('picture_last_over_first'), '.3f')} |" for r in many["prompts"]]

    def verdict(key: str, v: dict[str, Any]) -> str:
        text = f"{key} {'met' if v['met'] else 'not met'}"
        if "met_low_latency" in v:
            text += f" ({'met' if v['met_low_latency'] else 'not met'} with 1-frame units)"
        return text

    lines += ["", "targets: " + ", ".join(verdict(k, v) for k, v in doc["targets"].items()), ""]
    return "\n".join(lines)


def write_outputs(doc: dict[str, Any], out: Path) -> None:
    from accelframe_bench import charts
    from accelframe_bench.reports import write_tables

    write_tables(doc, out, markdown)
    loads = [r for r in doc["runs"] if r["sweep"] == "load"]
    if loads:
        charts.scatter(out / "load.png",
                       [(r["offered_fps"], r["fps"], f"{100 * r['deadline_miss_rate']:.0f}% missed")
                        for r in loads],
                       xlabel="offered fps (one stream)", ylabel="output fps")
    drift = doc.get("drift")
    xlabel = f"stream time s (start of each {drift['window_s']:g}-second window)" if drift else ""
    if drift and drift["windows"]:
        named = [("stream", "quality"), ("the world's rendering of the prompt", "reference"),
                 ("stream: picture (blur, smudges, seams)", "picture")]
        charts.line(out / "drift.png", [(name, [(w["t_s"], w[key]) for w in drift["windows"]
                                                if w.get(key) is not None]) for name, key in named],
                    xlabel=xlabel, ylabel="world quality", band=(drift["first"], DRIFT_GOAL) if drift["first"] else None)
    many = (drift or {}).get("across_prompts")
    if many:  # one line per prompt, named by its seed (results.md names the prompts)
        charts.line(out / "drift-prompts.png",
                    [(f"seed {r['seed']}", [(k * drift["window_s"], q / ref) for k, (q, ref)
                                            in enumerate(zip(r["quality"], r["reference"])) if ref])
                     for r in many["prompts"]],
                    xlabel=xlabel, ylabel="world quality / the rendering's", band=(1.0, DRIFT_GOAL))
        charts.line(out / "drift-picture.png",
                    [(f"seed {r['seed']}", [(k * drift["window_s"], x) for k, x in enumerate(r["picture"])])
                     for r in many["prompts"]],
                    xlabel=xlabel, ylabel="picture (blur, smudges, seams)")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="one load, 2 streams, short clips: under a minute")
    p.add_argument("--loads", default="8,16,24,32", metavar="LIST",
                   help="offered fps of the load sweep (default: 8,16,24,32)")
    p.add_argument("--fps", type=float, default=16.0, help="offered fps of the stream and soak runs (default: 16)")
    p.add_argument("--frames", type=int, default=105, help="pixel frames per stream (default: 105)")
    p.add_argument("--deadline", type=float, default=1.5, help="per-frame deadline in seconds (default: 1.5)")
    p.add_argument("--ranks", type=int, default=2, choices=(1, 2),
                   help="2: also compare 1 and 2 pipeline ranks; 1: skip that comparison (default: 2)")
    p.add_argument("--soak-seconds", type=float, default=0.0, help="also soak one stream this long (default: 0)")
    p.add_argument("--drift-seconds", type=float, default=0.0, metavar="S",
                   help="also stream text to video this long and measure the world quality of every 10-second "
                        "window (drift.png; --quick leaves it off; default: 0, off)")
    p.add_argument("--drift-prompts", type=int, default=1, metavar="N",
                   help="with --drift-seconds, stream the prompts of N seeds from --seed on (the first on the "
                        "real clock, the others on a virtual one: about a quarter of real time each here), "
                        "each against its rendering (drift-prompts.png, drift-picture.png; default: 1)")
    p.add_argument("--sink-tau", type=float, default=None, metavar="T",
                   help="rolling-kv's sink refresh threshold in every run, in [-1, 1] (default: the stream "
                        "command's, 0.6)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    p.add_argument("--out", default="bench-stream", metavar="DIR", help="output folder (default: bench-stream)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.add_argument("--overwrite", dest="force", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe_bench.reports import fresh_out, report

    try:
        loads = [float(x) for x in args.loads.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("bench stream", "--loads", args.loads, "comma-separated numbers, e.g. 8,16") from None
    if not loads or any(not f > 0 for f in loads):
        raise ConfigError("bench stream", "--loads", args.loads, "positive frame rates")
    for name in ("fps", "deadline"):
        if not getattr(args, name) > 0:
            raise ConfigError("bench stream", "--" + name, getattr(args, name), "a positive number")
    if args.frames < 9:
        raise ConfigError("bench stream", "--frames", args.frames, "at least 9 (one unit of the world's VAE)")
    if args.soak_seconds < 0:
        raise ConfigError("bench stream", "--soak-seconds", args.soak_seconds, "0 or more seconds")
    drift = getattr(args, "drift_seconds", 0.0)
    if not (drift == 0 or 2 * DRIFT_WINDOW_S <= drift < float("inf")):
        raise ConfigError("bench stream", "--drift-seconds", drift,
                          f"0 (off) or at least {2 * DRIFT_WINDOW_S:g} seconds "
                          f"(two {DRIFT_WINDOW_S:g}-second windows)")
    n_prompts = getattr(args, "drift_prompts", 1)
    if not (isinstance(n_prompts, int) and n_prompts >= 1):
        raise ConfigError("bench stream", "--drift-prompts", n_prompts, "an int >= 1")
    if n_prompts > 1 and not drift:
        raise ConfigError("bench stream", "--drift-prompts", n_prompts,
                          "1 unless --drift-seconds is given (the prompts are the drift run's)")
    from accelframe.streaming.cli import check_sink_tau

    check_sink_tau("bench stream", args)
    out = Path(args.out)
    fresh_out("bench stream", out, OUTPUTS, args.force)
    if args.quick:
        loads, frames = [args.fps], min(args.frames, 57)
    else:
        frames = args.frames
    doc = run_bench(loads=loads, fps=args.fps, frames=frames, deadline=args.deadline, seed=args.seed,
                    quick=args.quick, ranks=args.ranks == 2, soak_seconds=args.soak_seconds, quiet=args.json,
                    hooks=hooks, drift_seconds=0.0 if args.quick else drift,
                    sink_tau=getattr(args, "sink_tau", None), drift_prompts=n_prompts)
    return report(doc, out, write_outputs, markdown, args.json)


__all__ = ["Bench", "configure", "markdown", "run", "run_bench", "targets", "write_outputs"]
