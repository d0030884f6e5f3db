"""One rank of a stream on the world model's ring, for ``test_stream_ranks.py``: every rank runs this
file with the same settings (as under torchrun), rank 0 saves what it emitted.

    python ring_stream.py '{"ranks": 2, "policies": [...], ...}' OUT.pt

Settings: ``ranks``, ``lanes`` (one process: the reference), ``streams``, ``frames`` (pixel frames
per stream), ``v2v``, ``policies`` (``[name, kwargs]`` pairs used in order), ``partition``,
``die_after`` (this rank, if not 0, kills itself after handling that many ops: a crash mid-stream).
Rank 0 saves ``{"frames": {stream: [P, 3, H, W]}, "calls", "kv", "error", "sink"}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import torch

from accelframe.pipeline import Pipeline
from accelframe.streaming import StreamSource, VirtualClock
from accelframe.testing.fixtures import make_hooks
from accelframe_adapters import plugin as adapters_plugin
from accelframe_policies import plugin as policies_plugin

PROMPTS = ("a red circle moves right on a blue background", "a green square moves up on a black background")


class CountingSink:
    """Counts the frames written per stream and whether it was closed (flushed)."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.closed = False

    def write(self, stream: str, frames: torch.Tensor) -> None:
        self.frames[stream] = self.frames.get(stream, 0) + int(frames.shape[0])

    def close(self) -> None:
        self.closed = True


def pipeline(cfg: dict[str, Any], *plugins: Any) -> Pipeline:
    pipe = Pipeline("self-forcing", hooks=make_hooks(adapters_plugin, policies_plugin, *plugins),
                    adapter_kwargs={"size": "world"})
    for name, kw in cfg.get("policies", []):
        pipe.use(name, **kw)
    return pipe


def sources(cfg: dict[str, Any], side: int) -> list[StreamSource]:
    out = []
    for i in range(cfg.get("streams", 2)):
        pixels = None
        if cfg.get("v2v"):
            g = torch.Generator().manual_seed(100 + i)
            pixels = torch.rand(cfg["frames"], 3, side, side, generator=g)  # [P, 3, H, W]
        out.append(StreamSource(id=f"s{i}", prompt=PROMPTS[i % 2], num_frames=cfg["frames"], frames=pixels,
                                fps=50.0, seed=i))
    return out


def run(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's part; rank 0's (or one process's) result."""
    torch.set_num_threads(1)
    pipe = pipeline(cfg)
    rank = int(os.environ.get("RANK", "0"))
    die = cfg.get("die_after")
    if die is not None and rank > 0:
        from accelframe_adapters.parallel import ring

        handle = ring.Worker.handle

        def dying(self: Any, op: int, meta: dict[str, Any], tensors: list[torch.Tensor]) -> bool:
            if self.ops > die:
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: what a crash looks like to the peers
            return handle(self, op, meta, tensors)
        ring.Worker.handle = dying
    sink = CountingSink()
    doc: dict[str, Any] = {"error": None}
    try:
        res = pipe.stream(sources(cfg, pipe.adapter.pixel_size[0]), clock=VirtualClock(batch_cost_s=0.01),
                          stream_batch=True, ranks=cfg.get("ranks", 1), lanes=cfg.get("lanes"),
                          partition=cfg.get("partition"), rank_timeout_s=cfg.get("timeout_s", 60.0), sinks=[sink])
    except Exception as exc:  # noqa: BLE001 - the test reads what rank 0 saw
        doc["error"] = {"type": type(exc).__name__, "rank": getattr(exc, "rank", None), "message": str(exc)}
        res = None
    if res is None and doc["error"] is None:
        return None  # a rank > 0
    doc["sink"] = {"frames": sink.frames, "closed": sink.closed}
    if res is not None:
        doc["frames"] = {k: o.frames for k, o in res.outputs.items()}
        doc["calls"] = res.stats.to_dict()["calls"]["target"]
        doc["kv"] = [e for e in res.trace.of("kv")]
        doc["batches"] = len(res.batches)
    return doc


if __name__ == "__main__":
    got = run(json.loads(sys.argv[1]))
    if got is not None:
        torch.save(got, sys.argv[2])
