"""The streaming runtime: sources at a frame rate, per-frame deadlines, sinks, the stream loop and
the stream batch.

- :mod:`~accelframe.streaming.source`: what a stream reads (``StreamSource``, clocks, frame guards,
  chunked video decoding);
- :mod:`~accelframe.streaming.sinks`: where its frames go (mp4 files, callbacks);
- :mod:`~accelframe.streaming.batch`: rows of one batched forward over staggered steps;
- :mod:`~accelframe.streaming.loop`: ``StreamLoop``, which asks the batch, KV and noise hooks and runs
  the chunks (``pipe.stream(...)``);
- :mod:`~accelframe.streaming.cli`: the ``accelframe stream`` command.

The names users need are importable from here (``from accelframe.streaming import StreamSource``).
"""

from accelframe.streaming.loop import StreamLoop, StreamOutput, StreamRun
from accelframe.streaming.source import CorruptFrameError, CorruptFrameWarning, RealClock, StreamSource, VirtualClock

__all__ = ["CorruptFrameError", "CorruptFrameWarning", "RealClock", "StreamLoop", "StreamOutput", "StreamRun",
           "StreamSource", "VirtualClock"]
