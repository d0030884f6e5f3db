"""Streams on the ring from a JSON description, the same program on every rank (as under torchrun):
what ``python -m accelframe_adapters.parallel`` runs, what the benches time and the tests compare.

    python -m accelframe_adapters.parallel [--force] '{"ranks": 2, "streams": [...], ...}' OUT.pt

The description (every key optional):

- ``size``: the self-forcing model (default ``world``); ``decoder``: the adapter's decoder knob
  (default ``vae``); ``policies``: ``[name, kwargs]`` pairs used
  in order (JSON values only: a scorer or a callable cannot travel);
- ``streams``: ``{"id", "prompt", "seed", "frames" (pixel frames), "fps", "start_s", "v2v"}`` each
  (``v2v``: random input frames from that seed, video-to-video);
- ``clock``: ``{"batch_cost_s": s}`` (a :class:`~accelframe.streaming.source.VirtualClock` that
  advances that much per batch) or ``{"after_arrival": true}`` (every frame has arrived: chunks
  pile up as behind a live source at full load);
- ``ranks``, ``lanes``, ``partition``, ``decode_rank``, ``rebalance``, ``timeout_s``: the stream loop's;
- testing: ``die_after`` / ``hang_after``: a rank > 0 kills itself / stops answering after handling
  that many ops.

Rank 0 (or the one process) saves ``{"frames": {id: [P, 3, H, W]}, "wall_s", "stats", "kv",
"batches", "error", "sink"}`` (``torch.save``); ``error`` names what ended the run early, ``sink``
what a counting sink received and whether it was closed (flushed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_PROMPT = "a red circle moves right on a blue background"
KEYS = ("size", "decoder", "policies", "streams", "clock", "ranks", "lanes", "partition", "decode_rank", "rebalance",
        "timeout_s", "die_after", "hang_after")
STREAM_KEYS = ("id", "prompt", "seed", "frames", "fps", "start_s", "v2v")


def parse(text: str, source: str = "DESCRIPTION") -> dict[str, Any]:
    """A description from its JSON text: bad JSON, a value that is not an object or an unknown key
    is a :class:`~accelframe.errors.ConfigError` naming it (the stream loop checks the values)."""
    from accelframe.errors import ConfigError

    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("accelframe_adapters.parallel", source, text[:80], f"a JSON object ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError("accelframe_adapters.parallel", source, doc,
                          f"a JSON object with keys {', '.join(KEYS)}")
    for key in doc:
        if key not in KEYS:
            raise ConfigError("accelframe_adapters.parallel", key, doc[key], f"a known key: {', '.join(KEYS)}")
    for s in doc.get("streams") or []:
        stray = [k for k in (s if isinstance(s, dict) else {"streams": s}) if k not in STREAM_KEYS]
        if stray:
            raise ConfigError("accelframe_adapters.parallel", f"streams[].{stray[0]}", s,
                              f"stream objects with keys {', '.join(STREAM_KEYS)}")
    return doc


class CountingSink:
    """Counts the frames written per stream and whether it was closed (flushed)."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.closed = False

    def write(self, stream: str, frames: torch.Tensor) -> None:
        self.frames[stream] = self.frames.get(stream, 0) + int(frames.shape[0])

    def close(self) -> None:
        self.closed = True


def pipeline(cfg: dict[str, Any], hooks: Any = None) -> Any:
    """The self-forcing pipeline the description names, on ``hooks`` (default: a manager with
    every installed plugin loaded, whatever ``ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD`` says)."""
    from accelframe.pipeline import Pipeline
    from accelframe.plugins import create_hooks

    if hooks is None:
        hooks = create_hooks(autoload=True, disabled=())
    kwargs = {"size": cfg.get("size", "world"), "decoder": cfg.get("decoder", "vae")}
    pipe = Pipeline("self-forcing", hooks=hooks, adapter_kwargs=kwargs, trace=True)
    for name, kw in cfg.get("policies", []):
        pipe.use(name, **kw)
    return pipe


def sources(cfg: dict[str, Any], side: int) -> list[Any]:
    """The description's streams (default: one text-to-video stream of 45 pixel frames)."""
    from accelframe.streaming import StreamSource

    out = []
    for i, s in enumerate(cfg.get("streams") or [{}]):
        pixels = None
        if s.get("v2v"):
            g = torch.Generator().manual_seed(100 + int(s.get("seed", i)))
            pixels = torch.rand(s.get("frames", 45), 3, side, side, generator=g)  # [P, 3, H, W]
        out.append(StreamSource(id=s.get("id", f"s{i}"), prompt=s.get("prompt", DEFAULT_PROMPT),
                                num_frames=s.get("frames", 45), frames=pixels, fps=s.get("fps", 50.0),
                                start_s=s.get("start_s", 0.0), seed=s.get("seed", i)))
    return out


def clock(cfg: dict[str, Any], srcs: list[Any]) -> Any:
    from accelframe.streaming import VirtualClock

    c = cfg.get("clock", {})
    if c.get("after_arrival"):
        return VirtualClock(start=max(s.arrival_s(s.total - 1) for s in srcs) + 1.0)
    return VirtualClock(batch_cost_s=c.get("batch_cost_s", 0.01))


def _fault(cfg: dict[str, Any]) -> None:
    """The testing faults: a rank > 0 that dies or hangs after handling so many ops."""
    die, hang = cfg.get("die_after"), cfg.get("hang_after")
    if int(os.environ.get("RANK", "0")) == 0 or (die is None and hang is None):
        return
    from accelframe_adapters.parallel import ring

    handle = ring.Worker.handle

    def faulty(self: Any, op: int, meta: dict[str, Any], tensors: list[torch.Tensor]) -> bool:
        if die is not None and self.ops > die:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: what a crash looks like to the peers
        if hang is not None and self.ops > hang:
            while True:  # alive, connected, silent: only the peers' deadlines can tell
                time.sleep(3600)
        return handle(self, op, meta, tensors)
    ring.Worker.handle = faulty


def run(cfg: dict[str, Any], pipe: Any = None) -> dict[str, Any] | None:
    """This rank's part (on ``pipe``, default :func:`pipeline`); the result of rank 0 (or of one
    process), None on the other ranks."""
    _fault(cfg)
    pipe = pipe if pipe is not None else pipeline(cfg)
    srcs = sources(cfg, pipe.adapter.pixel_size[0])
    sink = CountingSink()
    doc: dict[str, Any] = {"error": None}
    t0 = time.perf_counter()
    try:
        res = pipe.stream(srcs, clock=clock(cfg, srcs), stream_batch=True, ranks=cfg.get("ranks", 1),
                          lanes=cfg.get("lanes"), partition=cfg.get("partition"),
                          decode_rank=cfg.get("decode_rank"), rebalance=cfg.get("rebalance", True),
                          rank_timeout_s=cfg.get("timeout_s", 60.0), sinks=[sink])
    except Exception as exc:  # noqa: BLE001 - reported: the caller reads what rank 0 saw
        if int(os.environ.get("RANK", "0")) != 0:
            raise
        doc["error"] = {"type": type(exc).__name__, "rank": getattr(exc, "rank", None), "message": str(exc)}
        res = None
    doc["wall_s"] = time.perf_counter() - t0
    if res is None and doc["error"] is None:
        return None  # a rank > 0
    doc["sink"] = {"frames": sink.frames, "closed": sink.closed}
    if res is not None:
        doc["frames"] = {k: o.frames for k, o in res.outputs.items()}
        doc["stats"] = res.stats.to_dict()
        doc["kv"] = list(res.trace.of("kv"))
        doc["rebalance"] = next(iter(res.trace.of("rebalance")), None)
        doc["batches"] = len(res.batches)
    return doc


def launch(cfg: dict[str, Any], ranks: int, out: str | Path, *, timeout_s: float = 300.0, grace_s: float = 15.0,
           env: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Run the description on ``ranks`` local processes (``python -m accelframe_adapters.parallel``,
    each with one torch thread unless ``env`` says otherwise); rank 0's document and every rank's
    output (rank 0 still running at ``timeout_s`` is killed, another rank ``grace_s`` after rank 0
    ended: one that hangs must not hold the caller)."""
    import subprocess

    from accelframe_adapters.parallel.comm import free_port

    out = Path(out)
    port = free_port()
    procs = []
    for r in range(ranks):
        e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}), "RANK": str(r), "LOCAL_RANK": str(r),
             "WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "accelframe_adapters.parallel",
                                       json.dumps({**cfg, "ranks": ranks}), str(out)],
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for r, p in enumerate(procs):  # once rank 0 is done, a peer gets a grace period, then is killed
        try:
            logs.append(p.communicate(timeout=timeout_s if r == 0 else grace_s)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            logs.append(p.communicate()[0])
    if not out.exists():
        raise RuntimeError("rank 0 saved nothing:\n" + "\n---\n".join(x[-2000:] for x in logs))
    return torch.load(out, weights_only=False), logs


def main(argv: list[str] | None = None) -> int:
    from accelframe.errors import ConfigError
    from accelframe.outputs import atomic_path, check_output

    argv = list(sys.argv[1:] if argv is None else argv)
    force = bool(argv) and argv[0] == "--force"
    argv = argv[1:] if force else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        cfg = parse(argv[0])
        check_output(argv[1], owner="accelframe_adapters.parallel", field="OUT", force=force)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with torch.no_grad():
        got = run(cfg)
    if got is not None:
        with atomic_path(argv[1]) as tmp:  # renamed into place when complete
            torch.save(got, tmp)
    return 0


__all__ = ["CountingSink", "KEYS", "clock", "launch", "main", "parse", "pipeline", "run", "sources"]
