"""Tests of accelframe.media: PNG encoding (read back by PyAV), frame strips, upscaling and mp4 writing."""

import struct
import sys
import zlib

import numpy as np
import pytest
import torch

from accelframe import media
from accelframe.errors import ConfigError
from accelframe.media import frame_strip, to_uint8, upscale, write_mp4, write_png, write_video


def _chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """Split a PNG into (type, data, stored crc) after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        out.append((kind, body, crc))
        pos += 12 + length
    assert pos == len(data)
    return out


def _decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB PNG to [H, W, 3] uint8 with PyAV (another decoder than a hand-written
    one: what any viewer reads back)."""
    import io

    import av

    chunks = _chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    depth, colour = struct.unpack(">BB", chunks[0][1][8:10])
    assert (depth, colour) == (8, 2)  # 8-bit RGB
    with av.open(io.BytesIO(data), format="png_pipe") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 1
    return frames[0].to_ndarray(format="rgb24")


def _frames(t=9, h=16, w=16, seed=0):
    return torch.rand(t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_to_uint8_clamps_rounds_and_permutes():
    frames = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0, 0.002]).reshape(1, 3, 1, 2)
    out = to_uint8(frames)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 2, 3)
    assert out[0, 0].T.tolist() == [[0, 0], [128, 255], [255, 1]]


def test_png_round_trip_tensor_and_array(tmp_path):
    image = _frames(1, 5, 7)[0]  # odd sizes on purpose
    path = write_png(tmp_path / "a.png", image)
    decoded = _decode_png(path.read_bytes())
    assert decoded.shape == (5, 7, 3)
    np.testing.assert_array_equal(decoded, to_uint8(image[None])[0])

    array = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    write_png(tmp_path / "b.png", array)
    np.testing.assert_array_equal(_decode_png((tmp_path / "b.png").read_bytes()), array)


def test_png_crcs_and_ihdr(tmp_path):
    write_png(tmp_path / "c.png", _frames(1, 6, 11)[0])
    chunks = _chunks((tmp_path / "c.png").read_bytes())
    kinds = [c[0] for c in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    for kind, body, crc in chunks:
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
    assert struct.unpack(">II", chunks[0][1][:8]) == (11, 6)
    assert chunks[-1][1] == b""


def test_png_round_trips_every_byte_value_exactly(tmp_path):
    values = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3)
    array = ((values * 7 + values // 3) % 256).astype(np.uint8)  # every value, no smooth gradient
    write_png(tmp_path / "all.png", array)
    np.testing.assert_array_equal(_decode_png((tmp_path / "all.png").read_bytes()), array)
    assert [p.name for p in tmp_path.iterdir()] == ["all.png"]  # no temporary left beside it


def test_png_without_av_names_the_fix_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(ConfigError, match="pip install av") as err:
        write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    assert err.value.field == "path" and list(tmp_path.iterdir()) == []


def test_png_rejects_bad_images(tmp_path):
    with pytest.raises(ConfigError):
        write_png(tmp_path / "x.png", torch.rand(4, 2, 2))
    with pytest.raises(ConfigError):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.float32))


def test_upscale_shape_and_values():
    frames = _frames(2, 3, 5)
    up = upscale(frames, 3)
    assert up.shape == (2, 3, 9, 15)
    assert torch.equal(up[:, :, ::3, ::3], frames)
    assert torch.equal(up[:, :, 2::3, 1::3], frames)
    assert upscale(frames, 1) is frames
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError) as err:
            upscale(frames, bad)
        assert err.value.field == "factor"


def test_frame_strip_picks_first_last_and_width():
    frames = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 3, 4, 5) / 20
    image, indices = frame_strip(frames, count=8, gap=2)
    assert indices[0] == 0 and indices[-1] == 19 and len(indices) == 8
    assert indices == sorted(set(indices))
    assert image.shape == (3, 4, 5 * 8 + 2 * 7)
    for slot, index in enumerate(indices):
        assert torch.equal(image[:, :, slot * 7:slot * 7 + 5], frames[index])
    assert (image[:, :, 5:7] == 1.0).all()


def test_frame_strip_short_clip_uses_all_frames():
    image, indices = frame_strip(_frames(3, 4, 4), count=8, gap=1, gap_value=0.0)
    assert indices == [0, 1, 2]
    assert image.shape == (3, 4, 4 * 3 + 2)
    assert (image[:, :, 4] == 0.0).all()


def test_write_mp4_reads_back(tmp_path):
    av = pytest.importorskip("av")
    path = write_mp4(tmp_path / "v.mp4", _frames(9, 16, 32), fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert (stream.codec_context.width, stream.codec_context.height) == (32, 16)
    assert len(decoded) == 9 and decoded[0].shape == (16, 32, 3)


def test_write_mp4_mpeg4_fallback(tmp_path, monkeypatch):
    av = pytest.importorskip("av")
    monkeypatch.setattr(media, "_pick_codec", lambda av: "mpeg4")
    path = write_mp4(tmp_path / "m.mp4", _frames(9, 16, 16), fps=8)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
        assert sum(1 for _ in container.decode(video=0)) == 9


@pytest.mark.parametrize(("h", "w", "field"), [(15, 16, "height"), (16, 15, "width")])
def test_write_mp4_odd_size_raises(tmp_path, h, w, field):
    with pytest.raises(ConfigError) as err:
        write_mp4(tmp_path / "odd.mp4", _frames(3, h, w), fps=8)
    assert err.value.field == field
    assert not (tmp_path / "odd.mp4").exists()


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 0, True])
def test_write_mp4_and_video_refuse_a_fps_that_is_not_finite_and_positive(tmp_path, fps):
    pytest.importorskip("av")
    for write in (write_mp4, write_video):
        with pytest.raises(ConfigError) as err:
            write(tmp_path / "v.mp4", _frames(3, 4, 4), fps=fps)
        assert err.value.field == "fps"
    assert list(tmp_path.iterdir()) == []


def test_write_mp4_without_av_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(ConfigError, match="pip install av"):
        write_mp4(tmp_path / "v.mp4", _frames(3), fps=8)


def test_write_video_mp4_writes_video_and_strip(tmp_path):
    pytest.importorskip("av")
    result = write_video(tmp_path / "clip.mp4", _frames(9, 7, 9), fps=8, upscale_factor=2)
    assert result["video"] == str(tmp_path / "clip.mp4")
    assert result["strip"] == str(tmp_path / "clip.png")
    assert result["strip_frames"] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert (tmp_path / "clip.mp4").stat().st_size > 0
    strip = _decode_png((tmp_path / "clip.png").read_bytes())
    assert strip.shape == (14, 18 * 8 + 2 * 7, 3)


def test_write_video_png_only_and_unknown_suffix(tmp_path):
    result = write_video(tmp_path / "s.png", _frames(4, 4, 4), fps=8)
    assert result == {"video": None, "strip": str(tmp_path / "s.png"), "strip_frames": [0, 1, 2, 3]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]
    with pytest.raises(ConfigError) as err:
        write_video(tmp_path / "s.gif", _frames(4, 4, 4), fps=8)
    assert ".mp4" in str(err.value) and ".png" in str(err.value)
    assert not (tmp_path / "s.gif").exists()
