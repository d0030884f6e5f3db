"""The Wan 2.1 VAE: equal to diffusers' AutoencoderKLWan, streaming decode equal to decoding at once,
snapshot / restore, checkpoints in both layouts, and errors that name what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

from accelframe.errors import CheckpointError, ConfigError
from accelframe_adapters.wan.vae import (
    WanVAE,
    WanVAEConfig,
    diffusers_to_wan,
    latent_frames,
    load_wan_vae,
    pixel_frames,
    valid_pixel_frames,
    wan_to_diffusers,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    """The tiny VAE with random weights (norm gains and biases too, so that no path is trivial)."""
    torch.manual_seed(0)
    model = WanVAE(WanVAEConfig.tiny()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            else:
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 9, 24, 16, generator=g) * 2 - 1  # [B, 3, T, H, W], T = 1 + 4 * 2


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 16, 6, 3, 2, generator=g)  # [B, z_dim, F, h, w]


# ---- shapes and config


def test_shapes(vae, video):
    z = vae.encode(video)
    assert z.shape == (2, 16, 3, 3, 2)
    x = vae.decode(z)
    assert x.shape == video.shape
    assert x.abs().max() <= 1.0


def test_config_inferred_from_state_dict(vae):
    assert WanVAEConfig.from_state_dict(vae.state_dict()) == WanVAEConfig.tiny()
    with torch.device("meta"):  # the released size, without allocating it
        full = WanVAE()
    sd = full.state_dict()
    assert WanVAEConfig.from_state_dict(sd) == WanVAEConfig()
    assert len(sd) == 194 and tuple(sd["decoder.head.2.weight"].shape) == (3, 96, 3, 3, 3)
    official = {"conv1.weight", "encoder.downsamples.0.residual.0.gamma", "decoder.upsamples.3.time_conv.weight"}
    assert official <= set(sd)


def test_bad_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="base_dim"):
        WanVAEConfig(base_dim=0)
    with pytest.raises(ConfigError, match="dim_mult"):
        WanVAEConfig(dim_mult=(1, 0, 2, 2))
    with pytest.raises(ConfigError, match="temporal_downsample.*3 for dim_mult"):
        WanVAEConfig(temporal_downsample=(True, True))
    with pytest.raises(ConfigError, match="dropout"):
        WanVAEConfig(dropout=1.5)


def test_invalid_frame_counts_name_the_valid_ones(vae):
    assert latent_frames(1) == 1 and latent_frames(81) == 21
    assert pixel_frames(21) == 81
    assert valid_pixel_frames(13) == [1, 5, 9, 13]
    for bad in (0, 8, 80, 2.0):
        with pytest.raises(ConfigError, match=r"1 \+ 4k frames .*: 1, 5, 9, 13") as err:
            latent_frames(bad)
        assert "pixel_frames" in str(err.value)
    with pytest.raises(ConfigError, match="nearest: 5 or 9"):
        latent_frames(8)
    with pytest.raises(ConfigError, match="nearest: 77 or 81"):
        vae.encode(torch.zeros(1, 3, 80, 16, 16))
    with pytest.raises(ConfigError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 16, 12))
    with pytest.raises(ConfigError, match=r"\[B, 16, T >= 1, H, W\]"):
        vae.decode(torch.zeros(1, 4, 2, 2, 2))


# ---- streaming


@pytest.mark.parametrize("chunks", [(1, 2, 3), (3, 3), (1, 1, 1, 1, 1, 1)])
def test_chunked_decode_equals_decode_at_once(vae, latents, chunks):
    whole = vae.decode(latents)
    cache = vae.new_decode_cache()
    parts = [vae.decode_chunk(piece, cache) for piece in latents.split(list(chunks), dim=2)]
    assert [p.shape[2] for p in parts] == [1 + 4 * (chunks[0] - 1)] + [4 * n for n in chunks[1:]]
    assert cache.frames == latents.shape[2]
    assert torch.equal(torch.cat(parts, dim=2), whole)


def test_snapshot_restore_reproduces_the_same_bits(vae, latents):
    cache = vae.new_decode_cache()
    vae.decode_chunk(latents[:, :, :2], cache)
    snap = vae.snapshot(cache)
    first = vae.decode_chunk(latents[:, :, 2:4], cache)
    after = vae.decode_chunk(latents[:, :, 4:], cache)
    vae.decode_chunk(torch.randn_like(latents[:, :, 2:4]), cache)  # wander off somewhere else
    for _ in range(2):  # a snapshot can be restored more than once
        vae.restore(cache, snap)
        assert cache.frames == 2
        assert torch.equal(vae.decode_chunk(latents[:, :, 2:4], cache), first)
        assert torch.equal(vae.decode_chunk(latents[:, :, 4:], cache), after)


def test_chunked_encode_equals_encode_at_once(vae, video):
    cache = vae.new_encode_cache()
    parts = [vae.encode_chunk(video[:, :, :5], cache), vae.encode_chunk(video[:, :, 5:], cache)]
    assert torch.equal(torch.cat(parts, dim=2), vae.encode(video))
    with pytest.raises(ConfigError, match="multiple of 4"):
        vae.encode_chunk(video[:, :, :3], cache)


# ---- checkpoints


def _write_diffusers_folder(folder, model: WanVAE) -> None:
    """A diffusers-style ``vae`` folder: config.json and diffusion_pytorch_model.safetensors."""
    from safetensors.torch import save_file

    cfg = model.config
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderKLWan", "base_dim": cfg.base_dim, "z_dim": cfg.z_dim,
        "dim_mult": list(cfg.dim_mult), "num_res_blocks": cfg.num_res_blocks, "attn_scales": list(cfg.attn_scales),
        "temperal_downsample": list(cfg.temporal_downsample), "dropout": cfg.dropout,
        "latents_mean": list(cfg.latents_mean), "latents_std": list(cfg.latents_std)}))
    tensors = {k: t.contiguous() for k, t in wan_to_diffusers(model.state_dict()).items()}
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))


def _same_weights(a: WanVAE, b: WanVAE) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_round_trip_original_layout(vae, tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(vae.state_dict(), path)
    loaded = load_wan_vae(path)
    assert loaded.config == vae.config and _same_weights(loaded, vae)
    assert not loaded.training


def test_checkpoint_round_trip_diffusers_layout(vae, tmp_path):
    _write_diffusers_folder(tmp_path / "vae", vae)
    loaded = load_wan_vae(tmp_path / "vae")
    assert loaded.config == vae.config and _same_weights(loaded, vae)
    loaded = load_wan_vae(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    assert _same_weights(loaded, vae)


def test_key_maps_are_inverse(vae):
    sd = vae.state_dict()
    theirs = wan_to_diffusers(sd)
    assert "decoder.up_blocks.0.upsamplers.0.time_conv.weight" in theirs
    assert "encoder.down_blocks.0.norm1.gamma" in theirs and "quant_conv.weight" in theirs
    assert diffusers_to_wan(theirs).keys() == sd.keys()


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_broken_checkpoint_lists_every_bad_key(vae, tmp_path, layout):
    sd = dict(vae.state_dict())
    del sd["decoder.head.0.gamma"]
    sd["encoder.extra.weight"] = torch.zeros(3)
    sd["decoder.middle.1.to_qkv.weight"] = torch.zeros(5, 5, 1, 1)
    if layout == "original":
        path = tmp_path / "broken.pth"
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "broken.safetensors"
        save_file({k: t.contiguous() for k, t in wan_to_diffusers(sd).items()}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_wan_vae(path)
    msg = str(err.value)
    assert "missing keys: decoder.head.0.gamma" in msg
    assert "unexpected keys: encoder.extra.weight" in msg
    assert "decoder.middle.1.to_qkv.weight: file (5, 5, 1, 1) vs model (48, 16, 1, 1)" in msg


def test_not_a_wan_vae_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a Wan 2.1 VAE"):
        load_wan_vae(path)


# ---- against diffusers' implementation (an optional test extra)


def test_equals_diffusers_autoencoder_kl_wan(vae, video, tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLWan

    cfg = vae.config
    ref = AutoencoderKLWan(base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                           num_res_blocks=cfg.num_res_blocks, attn_scales=list(cfg.attn_scales),
                           temperal_downsample=list(cfg.temporal_downsample)).eval()
    ref.load_state_dict(wan_to_diffusers(vae.state_dict()), strict=True)
    # diffusers pipelines normalise outside the VAE: (mu - mean) * (1 / std) and z / (1 / std) + mean
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    z = vae.encode(video)
    with torch.no_grad():
        z_ref = (ref.encode(video).latent_dist.mode() - mean) * inv_std
        x_ref = ref.decode(z / inv_std + mean).sample
    assert rel_err(z, z_ref) < 1e-5
    x = vae.decode(z)
    assert rel_err(x, x_ref) < 1e-5
    assert (x.abs() < 1).float().mean() > 0.5  # not a comparison of clamped constants

    # diffusers' own save_pretrained folder loads as the same network
    ref.save_pretrained(tmp_path / "vae")
    assert _same_weights(load_wan_vae(tmp_path / "vae"), vae)


def test_key_maps_match_diffusers_at_full_size():
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        ref, ours = AutoencoderKLWan(), WanVAE()
    shapes = lambda sd: {k: tuple(t.shape) for k, t in sd.items()}
    assert shapes(diffusers_to_wan(ref.state_dict())) == shapes(ours.state_dict())
    assert shapes(wan_to_diffusers(ours.state_dict())) == shapes(ref.state_dict())


@pytest.mark.parametrize("kernel,stride", [((3, 3, 3), (1, 1, 1)), ((1, 1, 1), (1, 1, 1)),
                                           ((3, 1, 1), (2, 1, 1)), ((3, 3, 3), (1, 2, 2))])
def test_cpu_fast_conv_equals_conv3d(kernel, stride):
    """The CPU fast path (one 2-D conv over time windows) computes F.conv3d's sums."""
    import torch.nn.functional as F

    from accelframe_adapters.wan.vae import _windowed_conv

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 9, 9, generator=g)  # [B, C, T, H, W]
    w = torch.randn(6, 5, *kernel, generator=g)
    b = torch.randn(6, generator=g)
    ref = F.conv3d(x, w, b, stride=stride)
    out = _windowed_conv(x, w, b, stride)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_cpu_fast_path_decodes_like_the_plain_path(vae, monkeypatch):
    import accelframe_adapters.wan.vae as wan_vae

    z = torch.randn(1, vae.config.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    fast = vae.decode(z)
    monkeypatch.setattr(wan_vae, "FAST_CPU", False)
    plain = vae.decode(z)
    assert rel_err(fast, plain) < 1e-5
