"""``accelframe bench serve``: ``accelframe serve`` under N concurrent clients on loopback.

One server (the command's pipeline: self-forcing on the world's models, ``slo-batch``, ``rolling-kv``,
``motion-noise``) runs in this process on its own threads, bound to 127.0.0.1 on a free port; for
each N of ``--loads`` N WebSocket clients start sessions 0.2 s apart (text-to-video from held-out
world prompts, or video-to-video sending rendered world clips as JPEG frames at the session fps),
read for ``--seconds``, stop, and read until the close. Per load: frames per second per admitted
session (as the client received them), time to first frame (connect to first frame, the worst
session), latency p95 (the server's, from arrival slot to emission, the worst session), the deadline
miss rate (the worst session), frames dropped for slow clients (all sessions) and the sessions
admission control refused (close 4003). Loads run one after the other on the same server, so the
batch policy's latency model has measurements when a larger load asks to be admitted.

The **switch** row: one text session in the hub (no sockets), switched to another prompt after
``SWITCH_AFTER`` chunks, with the cached context recomputed (the default) and without: the extra
model calls of the switch, the latency of the chunk after it against the median chunk, the first
chunk after the switch in which the new prompt's object shows (the world's segmentation: its
colour, size and a compact blob) and the first in which it shows in most frames.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from accelframe.errors import ConfigError

OUTPUTS = ("results.json", "results.md", "load.png")
FPS_GOAL, MISS_GOAL, TTFF_GOAL = 16.0, 0.01, 0.5
SWITCH_AFTER = 3  # chunks before the prompt switch
SWITCH_CHUNKS = 5  # chunks measured after it
SWITCH_FROM = "a red circle moves left on a blue background"
SWITCH_TO = "a yellow square moves up on a gray background"


def _args_pipeline(args: argparse.Namespace) -> argparse.Namespace:
    """The serve command's namespace for this bench's server (defaults of ``accelframe serve``)."""
    from accelframe.serve import cli as serve_cli

    p = argparse.ArgumentParser()
    serve_cli.configure(p)
    ns = p.parse_args(["--max-sessions", str(max(args.loads)), "--fps", str(args.fps),
                       "--deadline", str(args.deadline), "--port", "0"]
                      + (["--stream-batch"] if args.stream_batch else [])
                      + [x for s in args.policy for x in ("--policy", s)]
                      + (["--stack", args.stack] if args.stack else []))
    serve_cli.check_args(ns)
    return ns


async def client(port: int, prompt: str, seed: int, seconds: float, video: Any = None,
                 fps: float = 16.0) -> dict[str, Any]:
    """One session: start, read for ``seconds`` (sending ``video``'s frames at ``fps`` when given),
    stop, read until the close. What it received and the server's last metrics."""
    import websockets

    from accelframe.serve.images import encode_jpeg

    t0 = time.perf_counter()
    got: dict[str, Any] = {"frames": 0, "first_s": None, "last_s": None, "close": None, "ended": None,
                           "refused": False, "reason": ""}
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "prompt": prompt, "seed": seed,
                                  "mode": "video" if video is not None else "text"}))
        sender = None
        if video is not None:
            jpegs = [encode_jpeg(f) for f in video]

            async def send() -> None:
                k = 0
                while True:
                    await ws.send(jpegs[k % len(jpegs)])
                    k += 1
                    await asyncio.sleep(max(t0 + k / fps - time.perf_counter(), 0.0))
        stop_at, stopped = t0 + seconds, False
        try:
            while True:
                timeout = max(stop_at - time.perf_counter(), 0.0) if not stopped else 60.0
                try:
                    msg = await asyncio.wait_for(ws.recv(), timeout=timeout)
                except asyncio.TimeoutError:
                    if stopped:
                        break
                    stopped = True
                    if sender is not None:
                        sender.cancel()
                    await ws.send(json.dumps({"type": "stop"}))
                    continue
                now = time.perf_counter() - t0
                if isinstance(msg, bytes):
                    got["frames"] += 1
                    got["first_s"] = now if got["first_s"] is None else got["first_s"]
                    got["last_s"] = now
                    continue
                doc = json.loads(msg)
                if doc["type"] == "started" and video is not None:
                    sender = asyncio.create_task(send())
                elif doc["type"] == "ended":
                    got["ended"] = doc
                elif doc["type"] == "error" and doc.get("refused"):
                    got["refused"], got["refusal"] = True, doc["message"]  # whole (a close reason is cut)
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is not None:
                got["close"], got["reason"] = exc.rcvd.code, exc.rcvd.reason
        finally:
            if sender is not None:
                sender.cancel()
    return got


async def load(port: int, n: int, prompts: list[str], seconds: float, videos: list[Any] | None,
               fps: float) -> list[dict[str, Any]]:
    async def one(i: int) -> dict[str, Any]:
        await asyncio.sleep(0.2 * i)
        video = videos[i % len(videos)] if videos else None
        return await client(port, prompts[i % len(prompts)], i, seconds, video, fps)
    return list(await asyncio.gather(*[one(i) for i in range(n)]))


def row(n: int, mode: str, sessions: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s for s in sessions if not s["refused"] and s["ended"] is not None]
    fps = [(s["frames"] - 1) / (s["last_s"] - s["first_s"]) for s in ok
           if s["first_s"] is not None and s["last_s"] > s["first_s"]]
    ended = [s["ended"] for s in ok]
    worst = lambda key: max((e[key] for e in ended if e.get(key) is not None), default=None)
    return {"sessions": n, "mode": mode, "admitted": len(ok), "refused": sum(s["refused"] for s in sessions),
            "fps_per_session": statistics.fmean(fps) if fps else None,
            "ttff_s": max((s["first_s"] for s in ok if s["first_s"] is not None), default=None),
            "latency_p95_ms": worst("latency_p95_ms"), "deadline_miss_rate": worst("deadline_miss_rate"),
            "dropped_frames": sum(e.get("dropped_frames", 0) for e in ended),
            "refusals": [s.get("refusal") or s["reason"] for s in sessions if s["refused"]]}


def switch_run(args: argparse.Namespace, hooks: Any, recache: bool) -> dict[str, Any]:
    """One text session switched after SWITCH_AFTER chunks (see the module docstring), on the hub."""
    from accelframe.serve import cli as serve_cli
    from accelframe_adapters.world import clips, quality

    hub = serve_cli.build_hub(_args_pipeline(args), hooks)
    hub.loop.prompt_recache = recache
    chunks: list[Any] = []  # each emitted chunk's frames [F, 3, H, W]
    latency: list[float] = []  # each emitting batch's latency
    hub.loop.on_frames = lambda s, f: (chunks.append(f), hub._frames(s, f))
    hub.loop.on_batch = lambda r: latency.append(r["latency_s"]) if r["emitted"] else None
    hub.start()
    try:
        session = hub.open(SWITCH_FROM, seed=args.seed).result(timeout=60)
        while len(chunks) < SWITCH_AFTER:
            time.sleep(0.01)
        at = len(chunks)
        session.source.set_prompt(SWITCH_TO)
        while len(chunks) < at + SWITCH_CHUNKS:
            time.sleep(0.01)
        hub.close(session.id)
    finally:
        hub.shutdown()
    stats = hub.loop.stats
    calls = stats.calls["target"]
    after = chunks[at:at + SWITCH_CHUNKS]
    extra = sum(hub.loop.switches[-1]["calls"].values())
    per_unit = (calls["computed"] + calls["commit"] - extra) / max(stats.units, 1)  # a unit: the shortest chunk
    scene_new, scene_old = clips.parse_prompt(SWITCH_TO), clips.parse_prompt(SWITCH_FROM)
    shows = [{"new": quality.measure(c, scene_new).presence, "old": quality.measure(c, scene_old).presence}
             for c in after]
    visible = next((k + 1 for k, s in enumerate(shows) if s["new"] > 0), None)
    most = next((k + 1 for k, s in enumerate(shows) if s["new"] >= 0.5), None)
    lat = latency[at:at + 2]
    return {"recache": recache, "extra_calls": extra, "calls_per_chunk": per_unit,
            "chunk_latency_after_ms": 1000 * max(lat) if lat else None,
            "chunk_latency_median_ms": 1000 * statistics.median(latency) if latency else None,
            "visible_after_chunks": visible, "most_frames_after_chunks": most, "presence": shows}


def run_bench(args: argparse.Namespace, hooks: Any) -> dict[str, Any]:
    from accelframe.progress import progress_bar
    from accelframe.serve import cli as serve_cli
    from accelframe.serve.app import ServerThread
    from accelframe.streaming.cli import default_prompts, stream_source

    ns = _args_pipeline(args)
    hub = serve_cli.build_hub(ns, hooks)
    registry = hub.pipe.registry
    prompts = default_prompts(None, registry, max(args.loads), args.seed)
    videos = None
    modes = ["text", "video"] if args.mode == "both" else [args.mode]
    if "video" in modes:
        world = stream_source("world", registry)
        videos = [world.clip(p, args.seed + i, 105) for i, p in enumerate(prompts)]
    rows = []
    plan = [(m, n) for m in modes for n in args.loads]
    with progress_bar(total=len(plan) + 2, desc="bench serve", unit="run", quiet=args.json) as bar:
        with ServerThread(hub) as server:
            for mode, n in plan:
                sessions = asyncio.run(load(server.port, n, prompts, args.seconds,
                                            videos if mode == "video" else None, args.fps))
                rows.append(row(n, mode, sessions))
                t0 = time.perf_counter()
                while hub.sessions and time.perf_counter() - t0 < 30:  # the load drains
                    time.sleep(0.05)
                bar.update(1)
        switches = []
        for recache in (True, False):
            switches.append(switch_run(args, hooks, recache))
            bar.update(1)
    doc = {"setup": {"fps": args.fps, "deadline_s": args.deadline, "seconds": args.seconds,
                     "stream_batch": args.stream_batch, "policies": list(args.policy), "stack": args.stack, "threads": _threads()},
           "loads": rows, "switch": switches}
    doc["targets"] = targets(doc)
    return doc


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    two = next((r for r in doc["loads"] if r["sessions"] == 2 and r["mode"] == "text"), None)
    three = next((r for r in doc["loads"] if r["sessions"] == 3 and r["mode"] == "text"), None)
    out: dict[str, Any] = {}
    if two is not None:
        ok = (two["admitted"] == 2 and (two["fps_per_session"] or 0) >= FPS_GOAL - 0.5
              and (two["deadline_miss_rate"] or 0) <= MISS_GOAL and two["ttff_s"] is not None
              and two["ttff_s"] <= TTFF_GOAL)
        out["two_sessions_16fps"] = {"met": ok and doc["setup"]["seconds"] >= 120,
                                     "measured": {k: two[k] for k in ("fps_per_session", "deadline_miss_rate",
                                                                      "ttff_s")},
                                     "seconds": doc["setup"]["seconds"]}
    if three is not None and two is not None:
        breaks = (three["deadline_miss_rate"] or 0) > MISS_GOAL or (three["fps_per_session"] or 0) < FPS_GOAL - 0.5
        out["third_refused_if_it_breaks"] = {"met": three["refused"] >= 1 or not breaks,
                                             "refused": three["refused"], "would_break": breaks}
    rc = next((s for s in doc["switch"] if s["recache"]), None)
    if rc is not None:
        out["switch_within_2_chunks"] = {"met": rc["visible_after_chunks"] is not None
                                         and rc["visible_after_chunks"] <= 2,
                                         "measured": rc["visible_after_chunks"]}
        out["switch_at_most_one_chunk_of_calls"] = {"met": rc["extra_calls"] <= rc["calls_per_chunk"],
                                                    "measured": rc["extra_calls"],
                                                    "calls_per_chunk": rc["calls_per_chunk"]}
    return out


def markdown(doc: dict[str, Any]) -> str:
    from accelframe_bench.reports import cell

    s = doc["setup"]
    pipeline = (f"the stack file {s['stack']}" if s.get("stack") else
                "world target, self-forcing; slo-batch + rolling-kv + motion-noise")
    lines = ["# accelframe bench serve", "",
             f"{pipeline}{''.join(' + ' + x for x in s.get('policies', []))}"
             f"{', stream batch' if s['stream_batch'] else ''}; "
             f"{s['fps']:g} fps, deadline {s['deadline_s']:g} s, {s['seconds']:g} s per load, "
             f"{s['threads']} thread(s)", "",
             "| sessions | mode | admitted | refused | fps per session | ttff s | latency p95 ms "
             "| deadline miss | dropped |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["loads"]:
        miss = None if r["deadline_miss_rate"] is None else 100 * r["deadline_miss_rate"]
        lines.append(f"| {r['sessions']} | {r['mode']} | {r['admitted']} | {r['refused']} "
                     f"| {cell(r['fps_per_session'], '.1f')} | {cell(r['ttff_s'], '.2f')} "
                     f"| {cell(r['latency_p95_ms'], '.0f')} | {cell(miss, '.1f')} % | {r['dropped_frames']} |")
    lines += ["", "| prompt switch | extra calls | calls per unit | chunk after ms | median chunk ms | "
                  "new object shows in chunk | in most frames in chunk |", "|---|---|---|---|---|---|---|"]
    for w in doc["switch"]:
        lines.append(f"| {'recache' if w['recache'] else 'cross-attention only'} | {w['extra_calls']} "
                     f"| {w['calls_per_chunk']:.1f} | {cell(w['chunk_latency_after_ms'], '.0f')} "
                     f"| {cell(w['chunk_latency_median_ms'], '.0f')} | {cell(w['visible_after_chunks'], 'd')} "
                     f"| {cell(w['most_frames_after_chunks'], 'd')} |")
    lines += ["", "targets: " + ", ".join(f"{k} {'met' if v['met'] else 'not met'}"
                                          for k, v in doc["targets"].items()), ""]
    return "\n".join(lines)


def write_outputs(doc: dict[str, Any], out: Path) -> None:
    from accelframe_bench import charts
    from accelframe_bench.reports import write_tables

    write_tables(doc, out, markdown)
    series = []
    for mode in sorted({r["mode"] for r in doc["loads"]}):
        rows = [r for r in doc["loads"] if r["mode"] == mode and r["latency_p95_ms"] is not None]
        if rows:
            series.append((f"latency p95, {mode} sessions (worst session)",
                           [(r["sessions"], r["latency_p95_ms"]) for r in rows]))
    if series:
        ns = sorted({r["sessions"] for r in doc["loads"]})
        series.append(("deadline", [(n, 1000 * doc["setup"]["deadline_s"]) for n in ns]))
        charts.line(out / "load.png", series, xlabel="concurrent sessions asked for (refused ones do not run)",
                    ylabel="ms from a frame's arrival to its emission")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="loads 2 and 3, 12 s each, text only: under 90 s")
    p.add_argument("--loads", default="1,2,3", metavar="LIST", help="concurrent sessions per run (default: 1,2,3)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds each client reads (default: 30)")
    p.add_argument("--mode", default="text", choices=("text", "video", "both"),
                   help="text-to-video sessions, video-to-video (rendered world clips sent as JPEGs) or both")
    p.add_argument("--fps", type=float, default=16.0, help="frames per second of every session (default: 16)")
    p.add_argument("--deadline", type=float, default=1.5, help="per-frame deadline, seconds (default: 1.5, "
                                                              "as accelframe serve)")
    p.add_argument("--stream-batch", action="store_true", help="the server runs the stream batch")
    p.add_argument("--policy", action="append", default=[], metavar="NAME[:K=V,...]",
                   help="a step or block policy after the stream policies, repeatable (as accelframe serve)")
    p.add_argument("--stack", default=None, metavar="FILE",
                   help="the server's pipeline from a stack file (as accelframe serve --stack FILE)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise (default: 0)")
    p.add_argument("--out", default="bench-serve", metavar="DIR", help="output folder (default: bench-serve)")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, hooks: Any = None) -> int:
    from accelframe.plugins import create_hooks
    from accelframe_bench.reports import fresh_out, report

    try:
        args.loads = [int(x) for x in str(args.loads).split(",") if x.strip()]
    except ValueError:
        raise ConfigError("bench serve", "--loads", args.loads, "comma-separated ints, e.g. 1,2,3") from None
    if not args.loads or any(n < 1 or n > 16 for n in args.loads):
        raise ConfigError("bench serve", "--loads", args.loads, "session counts in [1, 16]")
    if args.quick:
        args.loads, args.seconds, args.mode = [2, 3], min(args.seconds, 12.0), "text"
    if not 1 <= args.seconds <= 3600:
        raise ConfigError("bench serve", "--seconds", args.seconds, "seconds in [1, 3600]")
    hooks = hooks if hooks is not None else create_hooks()
    _args_pipeline(args)  # every serve check before any model is loaded
    out = Path(args.out)
    fresh_out("bench serve", out, OUTPUTS, args.force)
    return report(run_bench(args, hooks), out, write_outputs, markdown, args.json)


__all__ = ["client", "configure", "markdown", "run", "run_bench", "targets", "write_outputs"]
