"""Checks of DESIGN.md's stream invariants on a finished run, for property tests of any adapter and
policy stack (``from accelframe.testing.invariants import CommitRecorder, check_stream_run``)::

    commits = CommitRecorder()
    pipe = Pipeline(..., hooks=make_hooks(my_plugin, commits))
    loop = StreamLoop(pipe, sources, clock=VirtualClock(), stream_batch=True)
    check_stream_run(loop, loop.run(), commits)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from accelframe.hookspecs import hookimpl
from accelframe.streaming.source import FrameMap
from accelframe.types import ModelCall


@attrs.define(eq=False)
class CommitRecorder:
    """A model-call wrapper plugin: the frames of every commit pass by (generation, model), in order;
    how many model calls ran; the most rows one forward ran."""

    frames: dict[tuple[int, str], list[tuple[int, int]]] = attrs.field(factory=dict)
    calls: int = 0
    rows: int = 0

    @hookimpl(wrapper=True)
    def accelframe_model_call(self, call: ModelCall) -> Any:
        self.calls += 1
        self.rows = max(self.rows, call.rows)
        out = yield
        if call.kind == "commit":
            self.frames.setdefault((call.generation, call.model.value), []).append(tuple(call.frames))
        return out


def check_stream_run(loop: Any, run: Any, commits: CommitRecorder) -> None:
    """Invariants 7 and 4 of a finished stream run (``AssertionError`` naming what broke):

    - no batch admitted frames of a stream that had not arrived at the batch's time;
    - every input frame was processed once and emitted once, in order, stamped with its arrival;
    - the target committed only emitted chunks, and every emitted chunk it did not commit is counted
      in ``commit_skipped`` (the stream batch holds the target's commits until something reads
      the target's KV, and a stream that ends skips the commits it still holds);
    - per stream the target's commits are consecutive chunks from frame 0, in order, up to the
      stream's last latent frame or, when the commits after it were skipped, to an earlier one."""
    fmap = FrameMap.of(loop.adapter)
    by_id = {s.id: s for s in run.sources}
    consumed = {s.id: 0 for s in run.sources}
    for b in run.batches:
        for stream, n in b["entries"]:
            src = by_id[stream]
            consumed[stream] += n
            got = src.received(b["t_s"])
            limit = fmap.latents_total(src.total) if got >= src.total else fmap.latents_complete(got)
            assert consumed[stream] <= limit, f"batch {b} admits {consumed[stream]} latent frames of " \
                                              f"{stream!r}; {limit} had arrived"
    emits = [tuple(e["frames"]) for e in run.trace.of("emit")]
    target = [tuple(e["frames"]) for e in run.trace.of("commit") if e["model"] == "target"]
    skipped = run.stats.calls["target"].get("commit_skipped", 0)
    assert not Counter(target) - Counter(emits) and len(emits) - len(target) == skipped, \
        f"the target committed {target}, the run emitted {emits} and skipped {skipped} commits"
    for s in run.sources:
        out = run.outputs[s.id]
        n = 0 if out.frames is None else out.frames.shape[0]
        assert n == s.num_frames, f"stream {s.id!r} emitted {n} of {s.num_frames} frames"
        assert out.arrival_s == [s.arrival_s(k) for k in range(s.num_frames)], \
            f"stream {s.id!r} emitted its frames out of order"
        total = fmap.latents_total(s.num_frames)
        assert consumed[s.id] == total, f"stream {s.id!r}: {consumed[s.id]} of {total} latent frames processed"
        spans = commits.frames.get((loop._state[s.id].generation, "target"), [])
        if not spans:  # nothing read the target's KV of this stream: every commit was skipped
            assert skipped, f"stream {s.id!r}: the target committed none of its chunks and skipped none"
            continue
        assert spans[0][0] == 0 and spans[-1][1] <= total and all(
            b0 == a1 for (_, b0), (a1, _) in zip(spans, spans[1:])), \
            f"stream {s.id!r}: the target's commits {spans} are not its chunks from 0 on, in order"
        assert spans[-1][1] == total or skipped, \
            f"stream {s.id!r}: the target's commits {spans} stop before {total} with none skipped"


__all__ = ["CommitRecorder", "check_stream_run"]
