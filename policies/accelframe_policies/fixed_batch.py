"""fixed-batch: the simplest BatchPolicy. A fixed chunk length, up to ``max_streams`` streams.

Streams are served oldest pending frame first. A stream is ready when it has a whole chunk
pending, or, when its source has ended, all of its remaining frames. It never batches more frames
than have arrived, nor more than the adapter can run as one chunk (``StreamStatus.runnable``: a
chunk is cut at the adapter's last frame position before a RoPE reset, for example). With
``chunk_units=1, max_streams=1`` it plans exactly what the exact fallback plans (a batch of one
unit).
"""

from __future__ import annotations

import attrs

from accelframe import BatchContext, BatchEntry, BatchPlan, hookimpl
from accelframe.validators import number_in


@attrs.define(eq=False, kw_only=True)
class FixedBatch:
    """Chunks of ``chunk_units`` units from at most ``max_streams`` streams per batch."""

    chunk_units: int = attrs.field(default=1, validator=number_in(1, 1000, integer=True))
    max_streams: int = attrs.field(default=1, validator=number_in(1, 1000, integer=True))

    @hookimpl
    def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
        chunk = self.chunk_units * ctx.unit_frames
        entries = []
        waiting = [s for s in ctx.streams if s.oldest_pending_s is not None]
        for s in sorted(waiting, key=lambda s: (s.oldest_pending_s, s.stream)):
            left = s.bounded(chunk)
            if left > 0 and s.pending >= left:
                entries.append(BatchEntry(stream=s.stream, frames=left))
            if len(entries) == self.max_streams:
                break
        return BatchPlan(entries=tuple(entries),
                         reason=f"fixed-batch: {len(entries)} stream(s) x {chunk} frames")
