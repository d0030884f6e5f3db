"""The tiny decoder (TAEHV's shape): streaming equals decoding at once, the Wan VAE's frame counts,
the config read back from a file's shapes, and the Wan adapters' ``decoder`` knob."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from accelframe.errors import CheckpointError, ConfigError
from accelframe.pipeline import Pipeline
from accelframe.plugins import create_hooks
from accelframe_adapters import plugin
from accelframe_adapters.wan.taehv import (
    MemBlock,
    TinyDecoder,
    TinyDecoderConfig,
    config_from_state_dict,
    load_tiny_decoder,
)
from accelframe_adapters.world import models

WORLD = TinyDecoderConfig(z_dim=8, widths=(8, 8, 4, 4), space_upscale=(False, True, True))


def _decoder(cfg: TinyDecoderConfig = WORLD, seed: int = 0) -> TinyDecoder:
    torch.manual_seed(seed)
    dec = TinyDecoder(cfg).eval()
    with torch.no_grad():  # livelier than the default init, whose ReLUs leave a flat, clamped output
        for p in dec.parameters():
            p.normal_(0.0, 0.3)
    return dec


def test_a_stream_decoded_chunk_by_chunk_equals_the_whole_and_has_the_vae_frame_counts():
    dec = _decoder()
    lat = torch.randn(2, 8, 7, 4, 4)
    whole = dec.decode(lat)
    assert whole.shape == (2, 3, 1 + 4 * 6, 16, 16)  # 1 frame, then 4 per latent frame, 4x in space
    cache = dec.new_decode_cache()
    parts = [dec.decode_chunk(lat[:, :, a:b], cache) for a, b in ((0, 1), (1, 4), (4, 7))]
    assert [p.shape[2] for p in parts] == [1, 12, 12]
    assert torch.equal(torch.cat(parts, 2), whole) and cache.frames == 7
    assert whole.min() >= -1 and whole.max() <= 1


def test_memory_is_the_only_link_between_frames_and_snapshots_restore_it():
    dec = _decoder()
    lat = torch.randn(1, 8, 4, 4, 4)
    cache = dec.new_decode_cache()
    dec.decode_chunk(lat[:, :, :2], cache)
    snap = dec.snapshot(cache)
    a = dec.decode_chunk(lat[:, :, 2:], cache)
    dec.restore(cache, snap)
    assert torch.equal(dec.decode_chunk(lat[:, :, 2:], cache), a)
    other = dec.new_decode_cache()
    dec.decode_chunk(lat[:, :, :2] + 1.0, other)  # another past changes the next frames
    assert not torch.equal(dec.decode_chunk(lat[:, :, 2:], other), a)


def test_memblock_reads_the_previous_frame():
    blk = MemBlock(2, 2)
    x, past = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    assert not torch.equal(blk(x, past), blk(x, torch.zeros_like(past)))


def test_config_from_shapes_and_a_foreign_file(tmp_path):
    cfg = TinyDecoderConfig(z_dim=16, widths=(16, 8, 8, 4), time_upscale=(False, True, True))
    dec = _decoder(cfg)
    sd = dec.state_dict()
    assert config_from_state_dict(sd) == cfg
    path = tmp_path / "taew.safetensors"  # no metadata: read from the shapes, encoder keys ignored
    save_file({**{k: v.contiguous() for k, v in sd.items()}, "encoder.0.weight": torch.zeros(1)}, str(path))
    loaded = load_tiny_decoder(str(path))
    lat = torch.randn(1, 16, 2, 2, 2)
    assert loaded.config == cfg and torch.equal(loaded.decode(lat), dec.decode(lat))
    bad = tmp_path / "bad.safetensors"
    save_file({"encoder.0.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(CheckpointError, match="tiny decoder"):
        load_tiny_decoder(str(bad))


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="widths"):
        TinyDecoderConfig(widths=(8, 8, 8))
    with pytest.raises(ConfigError, match="time_upscale"):
        TinyDecoderConfig(time_upscale=(1, 1, 1))


def _pipe(**kw):
    hooks = create_hooks(autoload=False, disabled=(), plugins=(plugin,))
    return Pipeline("self-forcing", hooks=hooks, adapter_kwargs=kw)


@pytest.mark.skipif(not (models.WEIGHTS / models.FILES["decoder"]).exists(), reason="world decoder not shipped")
def test_the_world_adapter_decodes_with_its_tiny_decoder():
    vae, tiny = _pipe(), _pipe(decoder="tiny")
    assert tiny.adapter.decoder is not tiny.adapter.vae and vae.adapter.decoder is vae.adapter.vae
    assert tiny.adapter.vae_key != vae.adapter.vae_key  # a drafter must decode with the target's decoder
    a = vae.generate("a red circle moves left on a blue background", num_frames=3, seed=0)
    b = tiny.generate("a red circle moves left on a blue background", num_frames=3, seed=0)
    assert torch.equal(a.latents, b.latents) and a.frames.shape == b.frames.shape
    assert (a.frames - b.frames).abs().mean() < 0.1  # the same video, decoded by another network


def test_the_decoder_knob_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(ConfigError, match="decoder"):
        _pipe(decoder=3)
    with pytest.raises(ConfigError, match="not the world's"):
        _pipe(size="tiny", decoder="tiny")
    wrong = tmp_path / "wrong.safetensors"  # 16 latent channels for the world's 8
    save_file({k: v.contiguous() for k, v in _decoder(TinyDecoderConfig(widths=(8, 8, 4, 4))).state_dict().items()},
              str(wrong))
    with pytest.raises(CheckpointError, match="latent channels"):
        _pipe(decoder=str(wrong))
