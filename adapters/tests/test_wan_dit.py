"""The Wan DiT against diffusers, and its KV cache against a full-sequence forward."""

from __future__ import annotations

import pytest
import torch

from accelframe.types import KVWrite
from accelframe_adapters.wan.dit import (
    KVCache,
    WanDiT,
    WanDiTConfig,
    apply_rope,
    block_causal_mask,
    diffusers_config,
    from_diffusers_key,
    reindex_cache,
    rope_freqs,
    to_diffusers_key,
)


def _model(**kw) -> WanDiT:
    torch.manual_seed(0)
    m = WanDiT(WanDiTConfig.tiny(**kw)).eval()
    with torch.no_grad():
        for p in m.parameters():  # default init leaves biases small: make every path matter
            p.add_(0.1 * torch.randn_like(p))
    return m


def _inputs(b: int = 1, f: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, 8, 8, generator=g)  # [B, C, F, H, W]
    t = torch.rand(b, f, generator=g) * 1000  # per-frame timesteps
    ctx = torch.randn(b, 8, 24, generator=g)  # [B, L, text_dim]
    return x, t, ctx


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_key_maps_are_inverse():
    for inject in (False, True):
        keys = _model(inject_sample_info=inject).state_dict().keys()
        assert all(from_diffusers_key(to_diffusers_key(k)) == k for k in keys)


@pytest.mark.parametrize("inject", [False, True])
@pytest.mark.parametrize("block", [None, 2])
def test_equals_diffusers_skyreels(inject, block):
    diffusers = pytest.importorskip("diffusers")
    ours = _model(inject_sample_info=inject)
    ref = diffusers.SkyReelsV2Transformer3DModel(**diffusers_config(ours.cfg)).eval()
    ref.load_state_dict({to_diffusers_key(k): t for k, t in ours.state_dict().items()}, strict=True)
    ref.config.num_frame_per_block = block or 1  # diffusers masks when the block is > 1
    x, t, ctx = _inputs()
    with torch.no_grad():
        want = ref(x, t, ctx, enable_diffusion_forcing=True, fps=[1] if inject else None, return_dict=False)[0]
        got = ours(x, t, ctx, causal_block=block, fps=1 if inject else None)
    assert _rel(got, want) < 1e-5


def test_equals_diffusers_wan_with_per_token_timesteps():
    diffusers = pytest.importorskip("diffusers")
    ours = _model()
    ref = diffusers.WanTransformer3DModel(**diffusers_config(ours.cfg, skyreels=False)).eval()
    ref.load_state_dict({to_diffusers_key(k): t for k, t in ours.state_dict().items()}, strict=True)
    x, t, ctx = _inputs(b=2)
    with torch.no_grad():
        scalar = ref(x, t[:, 0], ctx, return_dict=False)[0]  # one timestep per sample
        got = ours(x, t[:, :1].expand(-1, 6), ctx)
        assert _rel(got, scalar) < 1e-5
        per_token = t.repeat_interleave(16, dim=1)  # Wan 2.2 style [B, F * h * w]
        want = ref(x, per_token, ctx, return_dict=False)[0]
        assert _rel(ours(x, t, ctx), want) < 1e-5


def test_mask_is_block_causal():
    m = block_causal_mask(4, 2, 2)  # 4 frames of 2 tokens, blocks of 2 frames
    frame_mask = m[::2, ::2]
    assert frame_mask.tolist() == [[True, True, False, False], [True, True, False, False],
                                   [True, True, True, True], [True, True, True, True]]


@pytest.mark.parametrize("block", [1, 2, 3])
def test_kv_cache_equals_full_forward_under_the_mask(block):
    """Block by block with committed K/V equals one forward over all frames, masked."""
    model = _model()
    x, t, ctx = _inputs(f=6)
    with torch.no_grad():
        full = model(x, t, ctx, causal_block=block)
        cache = KVCache(num_layers=2, tokens_per_frame=16)
        cross = model.cross_cache(ctx)
        outs = []
        for s in range(0, 6, block):
            sl = slice(s, s + block)
            outs.append(model(x[:, :, sl], t[:, sl], cross, frame_offset=s, cache=cache, kv_write=KVWrite.COMMIT))
    assert cache.frames == tuple(range(6))
    assert _rel(torch.cat(outs, dim=2), full) < 1e-5


def test_scratch_writes_are_not_context_and_commit_overwrites_nothing():
    model = _model()
    x, t, ctx = _inputs(f=4)
    cross = model.cross_cache(ctx)
    with torch.no_grad():
        cache = KVCache(num_layers=2, tokens_per_frame=16)
        model(x[:, :, :2], t[:, :2], cross, frame_offset=0, cache=cache, kv_write=KVWrite.COMMIT)
        a = model(x[:, :, 2:], t[:, 2:], cross, frame_offset=2, cache=cache, kv_write=KVWrite.SCRATCH)
        assert cache.frames == (0, 1) and cache.scratch_frames == (2, 3)
        b = model(x[:, :, 2:], t[:, 2:], cross, frame_offset=2, cache=cache, kv_write=KVWrite.SCRATCH)
        assert torch.equal(a, b)  # scratch K/V of the first call are not attended by the second
        cache.commit_scratch()
        assert cache.frames == (0, 1, 2, 3) and cache.scratch_frames == ()


def test_window_keeps_sinks_and_recent_frames_and_memory_flat():
    model = _model()
    _, _, ctx = _inputs()
    cross = model.cross_cache(ctx)
    cache = KVCache(num_layers=2, tokens_per_frame=16, window=4, sink_size=1)
    sizes = []
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for s in range(0, 30, 2):
            x = torch.randn(1, 4, 2, 8, 8, generator=g)
            model(x, torch.zeros(1, 2), cross, frame_offset=s, cache=cache, kv_write=KVWrite.COMMIT)
            sizes.append(cache.nbytes())
    assert cache.frames == (0, 27, 28, 29)
    assert len(set(sizes[2:])) == 1  # flat once full


def test_reindex_moves_each_cached_key_to_its_slots_position_and_keeps_the_values():
    """A key written at RoPE position p and re-indexed to slot j equals the same key roped at j."""
    model = _model()
    _, _, ctx = _inputs()
    cross = model.cross_cache(ctx)
    cache = KVCache(num_layers=2, tokens_per_frame=16, window=4, sink_size=1)
    with torch.no_grad():
        for s in range(0, 8, 2):
            x = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(s))
            model(x, torch.zeros(1, 2), cross, frame_offset=s, cache=cache, kv_write=KVWrite.COMMIT)
    assert cache.frames == (0, 5, 6, 7) and cache.positions == (0, 5, 6, 7)
    k, v = list(cache.k), list(cache.v)
    reindex_cache(model, cache)
    assert cache.positions == (0, 1, 2, 3) and all(a is b for a, b in zip(cache.v, v))
    tables = model.rope_on(torch.device("cpu"))
    for old, new in zip(k, cache.k):
        unroped = apply_rope(old, rope_freqs(tables, torch.tensor([0, 5, 6, 7]), 4, 4).conj())
        want = apply_rope(unroped, rope_freqs(tables, torch.tensor([0, 1, 2, 3]), 4, 4))
        assert _rel(new, want) < 1e-5 and _rel(new, old) > 1e-2


def test_a_rope_reset_of_a_contiguous_cache_leaves_the_next_call_unchanged():
    """RoPE attends by distance: with the cached frames moved to 0 .. n - 1 and the next frame at n,
    the call equals the one without a reset. Left at their positions, the cached frames would sit
    after the next frame, and the call would change."""
    model = _model()
    x, t, ctx = _inputs(f=8)
    cross = model.cross_cache(ctx)
    with torch.no_grad():
        runs = []
        for reset in (False, True):
            cache = KVCache(num_layers=2, tokens_per_frame=16, window=3)
            for s in range(0, 6, 2):
                model(x[:, :, s:s + 2], torch.zeros(1, 2), cross, frame_offset=s, cache=cache,
                      kv_write=KVWrite.COMMIT)
            assert cache.frames == (3, 4, 5)
            if reset:
                reindex_cache(model, cache)
                cache.rope_offset = 6 - len(cache)
            runs.append(model(x[:, :, 6:], t[:, 6:], cross, frame_offset=6, cache=cache))
        stale = KVCache(num_layers=2, tokens_per_frame=16, window=3)
        for s in range(0, 6, 2):
            model(x[:, :, s:s + 2], torch.zeros(1, 2), cross, frame_offset=s, cache=stale, kv_write=KVWrite.COMMIT)
        stale.rope_offset = 3  # the next frame at 3, the cached frames left at 3, 4, 5
        moved = model(x[:, :, 6:], t[:, 6:], cross, frame_offset=6, cache=stale)
    assert _rel(runs[1], runs[0]) < 1e-5
    assert _rel(moved, runs[0]) > 1e-3


def test_snapshot_restore_reproduces_bits():
    model = _model()
    x, t, ctx = _inputs(f=6)
    cross = model.cross_cache(ctx)
    with torch.no_grad():
        cache = KVCache(num_layers=2, tokens_per_frame=16, window=3)
        model(x[:, :, :2], t[:, :2], cross, frame_offset=0, cache=cache, kv_write=KVWrite.COMMIT)
        snap = cache.snapshot()
        a = model(x[:, :, 2:4], t[:, 2:4], cross, frame_offset=2, cache=cache, kv_write=KVWrite.COMMIT)
        model(x[:, :, 4:], t[:, 4:], cross, frame_offset=4, cache=cache, kv_write=KVWrite.COMMIT)
        cache.restore(snap)
        assert cache.frames == (0, 1)
        b = model(x[:, :, 2:4], t[:, 2:4], cross, frame_offset=2, cache=cache, kv_write=KVWrite.COMMIT)
    assert torch.equal(a, b)


def test_rope_offset_shifts_positions():
    """RoPE is relative: the same frames at shifted positions give the same output."""
    model = _model()
    x, t, ctx = _inputs(f=3)
    with torch.no_grad():
        a = model(x, t, ctx, frame_offset=0)
        b = model(x, t, ctx, frame_offset=0, rope_start=7)
    assert _rel(a, b) < 1e-5


def test_probe_is_block_zero_modulated_input():
    model = _model()
    x, t, ctx = _inputs(f=3)
    p = model.probe(x, t)
    assert p.shape == (1, 3, 16, 32)  # [B, F, S, D]
    assert not torch.equal(p, model.probe(x, t + 100))


def test_config_errors_name_the_field():
    from accelframe.errors import ConfigError

    with pytest.raises(ConfigError, match="num_heads"):
        WanDiTConfig.tiny(num_heads=3)
    with pytest.raises(ConfigError, match="patch_size"):
        WanDiTConfig.tiny(patch_size=(2, 2, 2))


def test_mask_blocks_stay_aligned_for_a_call_that_starts_mid_video():
    model = _model()
    x, t, ctx = _inputs(f=6)
    with torch.no_grad():
        full = model(x, t, ctx, causal_block=2)
        # frames 2..5 alone: their blocks (2, 3) and (4, 5) do not see frames 0, 1 anyway
        part = model(x[:, :, 2:], t[:, 2:], ctx, causal_block=2, frame_offset=2, rope_start=2)
    assert _rel(part[:, :, :2], full[:, :, 2:4]) > 1e-3  # frames 2, 3 saw frames 0, 1 in the full pass
    m = block_causal_mask(3, 1, 2, first=1)  # frames 1, 2, 3: blocks 0, 1, 1
    assert m.tolist() == [[True, False, False], [True, True, True], [True, True, True]]


def test_spatial_embedding_places_tokens_and_checks_the_grid():
    from accelframe.errors import ConfigError

    plain = _model()
    assert not hasattr(plain, "spatial_embedding")  # the default is Wan's DiT, nothing added
    model = _model(spatial_grid=(4, 4))  # 8 x 8 latents, patch 2 x 2
    assert model.spatial_embedding.shape == (4, 4, 32)  # [h, w, D]
    x, t, ctx = _inputs(f=3)
    with torch.no_grad():
        out = model(x, t, ctx, causal_block=3)
        model.spatial_embedding.zero_()
        without = model(x, t, ctx, causal_block=3)
    assert out.shape == x.shape and _rel(out, without) > 1e-3  # the embedding reaches the output
    sd = model.state_dict()
    assert WanDiTConfig.from_state_dict(sd, num_heads=2).spatial_grid == (4, 4)
    assert WanDiTConfig.from_state_dict(plain.state_dict(), num_heads=2).spatial_grid is None
    with pytest.raises(ConfigError, match="token grid"):
        model(torch.randn(1, 4, 3, 8, 12), t, ctx)  # 4 x 6 tokens against a 4 x 4 table
    with pytest.raises(ConfigError, match="spatial_grid"):
        WanDiTConfig.tiny(spatial_grid=(4, 0))
