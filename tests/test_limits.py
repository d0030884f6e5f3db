"""Request size (issue 20, item 9): every adapter declares its limits, the pipeline and the stream loop
estimate memory before allocating and refuse with a LimitError naming the limit, a huge stream is
refused at once (no counting loop), and a video source is decoded chunk by chunk as it is consumed."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from accelframe.adapter import Limits, limits_of
from accelframe.errors import ConfigError, LimitError
from accelframe.limits import memory_budget
from accelframe.pipeline import Pipeline
from accelframe.streaming.source import FrameMap, StreamSource, VirtualClock
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks

SMALL_WAN = {"size": "tiny", "height": 32, "width": 32}


def _analytic(**kw) -> Pipeline:
    return Pipeline("analytic", hooks=make_hooks(), adapter_kwargs=kw)


# ---- the memory estimate ------------------------------------------------------------------------


def test_a_request_beyond_the_memory_budget_is_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("ACCELFRAME_MAX_MEMORY_GB", "1")
    pipe = _analytic()
    t0 = time.perf_counter()
    with pytest.raises(LimitError) as info:
        pipe.generate("a red circle", num_frames=99999999)
    assert time.perf_counter() - t0 < 2.0
    err = info.value
    assert isinstance(err, ConfigError)
    assert (err.field, err.value, err.limit) == ("num_frames", 99999999, "memory")
    assert "ACCELFRAME_MAX_MEMORY_GB" in str(err) and "99999999" in str(err)
    # the largest count the error allows is accepted, one unit more is not
    unit = pipe.adapter.unit_frames
    most = err.maximum // unit * unit
    assert most > 0
    assert pipe.request("a red circle", num_frames=most).num_frames == most
    with pytest.raises(LimitError):
        pipe.request("a red circle", num_frames=most + unit)
    # the estimate scales with the batch
    with pytest.raises(LimitError) as two:
        pipe.request(["a", "b"], num_frames=most)
    assert two.value.maximum < most


def test_the_memory_budget_comes_from_the_machine_or_the_environment(monkeypatch):
    monkeypatch.delenv("ACCELFRAME_MAX_MEMORY_GB", raising=False)
    found, where = memory_budget()
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert 0 < found <= total_kb * 1024 and "available" in where
    monkeypatch.setenv("ACCELFRAME_MAX_MEMORY_GB", "0.5")
    assert memory_budget()[0] == 2**29
    for bad in ("nope", "-1", "0", "inf"):
        monkeypatch.setenv("ACCELFRAME_MAX_MEMORY_GB", bad)
        with pytest.raises(ConfigError, match="ACCELFRAME_MAX_MEMORY_GB"):
            memory_budget()


def test_generate_frames_99999999_is_refused_at_once_by_the_cli(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    from accelframe.cli import main

    monkeypatch.setenv("ACCELFRAME_MAX_MEMORY_GB", "4")
    t0 = time.perf_counter()
    code = main(["generate", "--adapter", "analytic", "--frames", "99999999"])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < 5.0
    assert "num_frames" in err and "99999999" in err and "memory" in err


# ---- declared limits ----------------------------------------------------------------------------


class _Small(AnalyticAdapter):
    """An analytic adapter declaring fixed limits, as a third-party adapter would."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.limits = Limits(max_frames=12, max_batch=2, max_height=8, max_width=8)


def test_declared_frame_batch_and_size_limits_are_enforced_by_the_pipeline():
    pipe = Pipeline(_Small(), hooks=make_hooks())
    pipe.request(["a", "b"], num_frames=12)
    with pytest.raises(LimitError) as info:
        pipe.request("a", num_frames=15)
    assert (info.value.field, info.value.limit, info.value.maximum) == ("num_frames", "max_frames", 12)
    with pytest.raises(LimitError) as info:  # a stream's later chunk: positions count, not the chunk
        pipe.request("a", num_frames=3, first_frame=12)
    assert info.value.limit == "max_frames" and info.value.field == "num_frames"
    pipe.request("a", num_frames=3, first_frame=12, rope_offset=3)  # past a RoPE reset it fits
    with pytest.raises(LimitError) as info:
        pipe.request(["a", "b", "c"], num_frames=3)
    assert (info.value.field, info.value.value, info.value.limit) == ("prompts", 3, "max_batch")
    big = Pipeline(_Small(height=16, width=16), hooks=make_hooks())
    with pytest.raises(LimitError) as info:
        big.request("a", num_frames=3)
    assert info.value.limit == "max_height" and info.value.value == 16


def test_adapters_without_declared_limits_get_a_default_from_their_shapes():
    ad = AnalyticAdapter(channels=4, height=8, width=8)
    bare = type("Bare", (), {"latent_shape": (4, 8, 8), "unit_frames": 1})()
    lim = limits_of(bare)
    assert lim.max_frames is None and lim.max_batch is None
    assert lim.latent_frame_bytes >= 4 * 8 * 8 * 4 and lim.pixel_frame_bytes >= 3 * 8 * 8 * 4
    # the analytic adapter declares its own, from its config
    own = limits_of(ad)
    assert own is ad.limits and own.max_height == 512 and own.kv_frame_bytes >= 4 * 8 * 8 * 4
    wide = limits_of(AnalyticAdapter(channels=8, height=16, width=8))
    assert wide.latent_frame_bytes == 4 * own.latent_frame_bytes


def test_wan_adapters_declare_their_rope_positions_and_kv_size():
    from accelframe_adapters import plugin as adapters_plugin
    from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

    ad = SelfForcingAdapter(**SMALL_WAN)
    pipe = Pipeline(ad, hooks=make_hooks(adapters_plugin))
    n = ad.dit.cfg.rope_max_len
    with pytest.raises(LimitError) as info:
        pipe.request("a red circle", num_frames=n // 3 * 3 + 3)
    assert info.value.limit == "max_frames" and info.value.maximum == n
    pipe.request("a red circle", num_frames=n // 3 * 3)
    lim = limits_of(ad)
    cfg = ad.dit.cfg
    assert lim.kv_frame_bytes == 2 * cfg.num_layers * ad.tokens_per_frame * cfg.dim * 4
    windowed = limits_of(SelfForcingAdapter(**SMALL_WAN, local_attn_size=9))
    assert windowed.kv_frames == 9


def test_magi_declares_its_kv_size_and_is_refused_over_budget(monkeypatch):
    from accelframe_adapters import plugin as adapters_plugin
    from accelframe_adapters.magi.adapter import MagiAdapter

    pipe = Pipeline("magi-1", hooks=make_hooks(adapters_plugin),
                    adapter_kwargs={"size": "tiny", "height": 32, "width": 32, "num_steps": 8, "window_size": 2})
    ad = pipe.adapter
    assert isinstance(ad, MagiAdapter)
    lim = limits_of(ad)
    assert lim.kv_frame_bytes > 0 and lim.max_frames is None
    w = ad.unit_frames
    per_frame = lim.latent_frame_bytes + lim.kv_frame_bytes + 4 * lim.pixel_frame_bytes
    monkeypatch.setenv("ACCELFRAME_MAX_MEMORY_GB", str(100 * w * per_frame / 2**30))
    pipe.request("a", num_frames=2 * w)
    with pytest.raises(LimitError) as info:
        pipe.request("a", num_frames=200 * w)
    assert info.value.limit == "memory"


# ---- streams ------------------------------------------------------------------------------------


def test_frame_map_counts_in_closed_form():
    for unit, ratio, first in ((1, 1, 1), (3, 4, 1), (2, 4, 1), (4, 1, 1)):
        fm = FrameMap(unit=unit, ratio=ratio, first=first)
        for pix in range(0, 60):
            n = 0
            while fm.pixels(n) < pix:
                n += unit
            assert fm.latents_total(pix) == n
    t0 = time.perf_counter()
    assert FrameMap(unit=3, ratio=4, first=1).latents_total(10**18) % 3 == 0
    src = StreamSource(id="s", prompt="p", num_frames=10**18, fps=16.0, stall_timeout_s=2.0)
    assert src.delivered == 10**18 and not src.stalled
    assert StreamSource(id="s", prompt="p", num_frames=10**18, fps=0.25, stall_timeout_s=2.0).delivered == 1
    assert time.perf_counter() - t0 < 1.0


def test_a_stream_of_10_to_the_18_frames_is_refused_at_once(monkeypatch):
    monkeypatch.setenv("ACCELFRAME_MAX_MEMORY_GB", "4")
    pipe = _analytic(unit_frames=2, steps=2, height=4, width=4)
    src = StreamSource(id="s0", prompt="a red circle", num_frames=10**18, fps=16.0, stall_timeout_s=2.0)
    t0 = time.perf_counter()
    with pytest.raises(LimitError) as info:
        pipe.stream([src], clock=VirtualClock(), keep_frames=False)
    assert time.perf_counter() - t0 < 2.0
    assert info.value.limit == "memory" and info.value.value == 10**18 and "s0" in info.value.owner
    # streams side by side share the budget: two of the largest allowed stream are too many
    most = info.value.maximum
    ok = StreamSource(id="a", prompt="a red circle", num_frames=most, fps=16.0)
    from accelframe.streaming import StreamLoop

    StreamLoop(pipe, [ok], clock=VirtualClock(), keep_frames=False)
    with pytest.raises(LimitError):
        StreamLoop(pipe, [ok, StreamSource(id="b", prompt="a blue square", num_frames=most, fps=16.0)],
                   clock=VirtualClock(), keep_frames=False)


def test_stream_cli_refuses_10_to_the_18_frames_at_once(capsys, monkeypatch, tmp_path):
    from accelframe.cli import main

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    t0 = time.perf_counter()
    code = main(["stream", "--source", "none", "--frames", str(10**18), "--out", str(tmp_path / "s.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < 20.0
    assert str(10**18) in err and "memory" in err
    assert not list(tmp_path.iterdir())


# ---- video sources ------------------------------------------------------------------------------


def _write_video(path, n: int, h: int, w: int) -> None:
    """Write an mp4 of ``n`` frames of moving gradients with PyAV (lossy: callers decode it to compare)."""
    av = pytest.importorskip("av")
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(16))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            img = np.stack([(xx * 4 + k * 9) % 256, (yy * 4 + k * 5) % 256, (xx + yy + 40 * k) % 256], -1)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _eager(path, size) -> torch.Tensor:
    """The whole video decoded at once and resized (what the stream command used to do)."""
    import av

    with av.open(str(path)) as container:
        arrays = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    video = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return torch.nn.functional.interpolate(video, size=size, mode="area").clamp(0.0, 1.0)


def _count_decoded(monkeypatch) -> list[int]:
    """Count the frames PyAV decodes from now on (through any container opened for reading)."""
    import av

    count = [0]
    real_open = av.open

    class Counted:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for frame in self._inner.decode(*args, **kwargs):
                count[0] += 1
                yield frame

    def counted_open(*args, **kwargs):
        c = real_open(*args, **kwargs)
        return c if kwargs.get("mode", "r") != "r" else Counted(c)

    monkeypatch.setattr(av, "open", counted_open)
    return count


def test_a_video_source_is_decoded_and_resized_chunk_by_chunk(tmp_path, monkeypatch):
    pytest.importorskip("av")
    from accelframe.streaming.cli import read_video

    path = tmp_path / "in.mp4"
    n = 24
    _write_video(path, n, 144, 176)
    want = _eager(path, (4, 4))
    assert want.shape[0] == n
    decoded = _count_decoded(monkeypatch)
    video = read_video(str(path), (4, 4), None)
    assert tuple(video.shape) == (n, 3, 4, 4)
    assert decoded[0] < 4  # opening the source decodes (almost) nothing
    pipe = _analytic(unit_frames=2, steps=2, height=4, width=4)
    lag = []

    def on_frames(stream, frames):
        emitted = sum(x.shape[0] for x in out_chunks) + frames.shape[0]
        out_chunks.append(frames)
        lag.append(decoded[0] - emitted)

    out_chunks: list[torch.Tensor] = []
    src = StreamSource(id="v", prompt="a red circle", frames=video, fps=16.0)
    run = pipe.stream([src], clock=VirtualClock(), on_frames=on_frames)
    assert sum(x.shape[0] for x in out_chunks) == n and run.ended["v"] == "complete"
    assert max(lag) <= 4  # decoding never runs more than a chunk ahead of what was emitted
    # the frames are those of a whole-file decode and resize
    assert torch.allclose(video[list(range(n))], want, atol=1e-6)
    assert torch.allclose(video[5], want[5], atol=1e-6)  # going back re-reads from the start


def test_read_video_limit_and_bad_files(tmp_path):
    pytest.importorskip("av")
    from accelframe.streaming.cli import read_video

    path = tmp_path / "in.mp4"
    _write_video(path, 10, 32, 32)
    assert read_video(str(path), (8, 8), 4).shape[0] == 4
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ConfigError, match="--source"):
        read_video(str(bad), (8, 8), None)
