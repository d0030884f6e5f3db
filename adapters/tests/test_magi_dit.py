"""The MAGI-1 DiT: state-dict names and shapes of the released sizes, chunk-by-chunk generation with the
packed KV cache equal to one forward over the window (chunk-causal and MAGI's banded ranges), the
conditioning switches (text row, dt, RoPE start), and checkpoints in the released layout."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import save_file

from accelframe.errors import CheckpointError, ConfigError
from accelframe_adapters.magi import dit as magi_dit
from accelframe_adapters.magi.checkpoints import load_magi_checkpoint, save_magi_checkpoint
from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig, MagiKVCache

CW = 6  # chunk width of the tiny config
H = W = 4  # latent size: 2 x 2 tokens, 24 tokens per chunk


# ---- helpers ------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")


def network(seed: int = 0, cfg: MagiDiTConfig | None = None) -> MagiDiT:
    """A tiny DiT with random weights, zero-centred norm weights and biases perturbed too."""
    torch.manual_seed(seed)
    net = MagiDiT(cfg or MagiDiTConfig.tiny()).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def inputs(net: MagiDiT, chunks: int, batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = net.cfg
    x = torch.randn(batch, cfg.latent_channels, chunks * cfg.chunk_width, H, W, generator=g)
    t = torch.rand(batch, chunks, generator=g)
    cap = torch.randn(batch, cfg.caption_max_length, cfg.caption_channels, generator=g)
    mask = torch.zeros(batch, cfg.caption_max_length, dtype=torch.bool)
    mask[:, :7] = True
    return x, t, cap, mask


def chunk(x: torch.Tensor, j: int, n: int = 1) -> torch.Tensor:
    return x[:, :, j * CW:(j + n) * CW]


def spec_shapes(cfg: MagiDiTConfig) -> dict[str, tuple[int, ...]]:
    """The spec's state-dict table (section 1.3), written out from its formulas."""
    d, dc, hq, hkv, hd = (cfg.hidden_size, cfg.cond_hidden_size, cfg.num_attention_heads, cfg.num_query_groups,
                          cfg.kv_channels)
    f, cc, p = cfg.ffn_hidden_size, cfg.caption_channels, cfg.patch_size
    out = {"x_embedder.weight": (d, cfg.in_channels, 1, p, p),
           "t_embedder.mlp.0.weight": (dc, 256), "t_embedder.mlp.0.bias": (dc,),
           "t_embedder.mlp.2.weight": (dc, dc), "t_embedder.mlp.2.bias": (dc,),
           "y_embedder.y_proj_xattn.0.weight": (d, cc), "y_embedder.y_proj_xattn.0.bias": (d,),
           "y_embedder.y_proj_adaln.0.weight": (dc, cc), "y_embedder.y_proj_adaln.0.bias": (dc,),
           "y_embedder.null_caption_embedding": (cfg.caption_max_length, cc), "rope.bands": (hd // 8,),
           "videodit_blocks.final_layernorm.weight": (d,), "videodit_blocks.final_layernorm.bias": (d,),
           "final_linear.linear.weight": (p * p * cfg.out_channels, d)}
    for i in range(cfg.num_layers):
        pre, sa = f"videodit_blocks.layers.{i}.", f"videodit_blocks.layers.{i}.self_attention."
        out |= {pre + "ada_modulate_layer.proj.0.weight": (2 * d, dc),
                pre + "ada_modulate_layer.proj.0.bias": (2 * d,),
                sa + "linear_qkv.layer_norm.weight": (d,), sa + "linear_qkv.layer_norm.bias": (d,),
                sa + "linear_qkv.q.weight": (hq * hd, d), sa + "linear_qkv.qx.weight": (hq * hd, d),
                sa + "linear_qkv.k.weight": (hkv * hd, d), sa + "linear_qkv.v.weight": (hkv * hd, d),
                sa + "linear_kv_xattn.weight": (2 * hkv * hd, d), sa + "linear_proj.weight": (d, 2 * hq * hd),
                pre + "mlp.layer_norm.weight": (d,), pre + "mlp.layer_norm.bias": (d,),
                pre + "mlp.linear_fc1.weight": ((2 if cfg.gated_linear_unit else 1) * f, d),
                pre + "mlp.linear_fc2.weight": (d, f)}
        for norm in ("q_layernorm", "k_layernorm", "q_layernorm_xattn", "k_layernorm_xattn"):
            out |= {sa + norm + ".weight": (hd,), sa + norm + ".bias": (hd,)}
        for norm in ("self_attn_post_norm", "mlp_post_norm"):
            out |= {pre + norm + ".weight": (d,), pre + norm + ".bias": (d,)}
    return out


def shapes_of(net: MagiDiT) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in net.state_dict().items()}


# ---- the network's names and shapes -------------------------------------------------------------


def test_tiny_state_dict_matches_the_spec_table():
    net = network()
    assert shapes_of(net) == spec_shapes(net.cfg)


@pytest.mark.parametrize("size, params", [("magi_4_5b", 4.4e9), ("magi_24b", 23.9e9)])
def test_released_sizes_match_the_spec_table_on_meta(size, params):
    cfg = getattr(MagiDiTConfig, size)()
    with torch.device("meta"):
        net = MagiDiT(cfg)
    got = shapes_of(net)
    assert got == spec_shapes(cfg)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - params) / params < 0.03, n
    if size == "magi_4_5b":  # literal values of the table
        assert got["x_embedder.weight"] == (3072, 16, 1, 2, 2)
        assert got["videodit_blocks.layers.33.self_attention.linear_proj.weight"] == (3072, 6144)
        assert got["videodit_blocks.layers.0.self_attention.linear_kv_xattn.weight"] == (2048, 3072)
        assert got["final_linear.linear.weight"] == (64, 3072)
        assert got["y_embedder.null_caption_embedding"] == (800, 4096)
    else:
        assert got["x_embedder.weight"] == (6144, 32, 1, 2, 2)
        assert got["videodit_blocks.layers.47.mlp.linear_fc1.weight"] == (32768, 6144)
        assert got["videodit_blocks.layers.0.ada_modulate_layer.proj.0.weight"] == (12288, 1536)
        assert got["final_linear.linear.weight"] == (128, 6144)


def test_rope_covers_three_quarters_of_the_head_on_a_16_by_16_reference_grid():
    rope = magi_dit.LearnedRope(128)
    assert torch.allclose(rope.bands, 10000.0 ** (-torch.arange(16) / 16))
    ang = rope.angles(12, 2, 45, 45, torch.device("cpu"))  # 720 x 720: 45 x 45 tokens
    assert ang.shape == (2 * 45 * 45, 48)
    assert ang[:, 0].min() == 12 and ang[:, 0].max() == 13  # absolute frame positions, band 0 = 1
    assert torch.allclose(ang[:, 16].abs().max(), torch.tensor(7.5))  # h centred, rescaled to +-7.5
    assert torch.allclose(ang[:, 32].abs().max(), torch.tensor(7.5))
    x = torch.randn(1, ang.shape[0], 2, 128)
    y = magi_dit.apply_rope(x, ang)
    assert torch.equal(y[..., 96:], x[..., 96:])  # dims 96..127 are not rotated
    assert torch.allclose(y[..., :96].norm(dim=-1), x[..., :96].norm(dim=-1), atol=1e-4)


# ---- the gate: chunk by chunk with the packed KV cache == one forward over the window --------------


def masked_self_attention(q, k, val, plan, cache, layer):
    """Reference: one attention over the whole window with an explicit chunk mask (no cache)."""
    assert cache is None and plan.first == 0
    n, s = plan.ctn, q.shape[1]
    chunk_of = torch.arange(s) // n
    lo = torch.tensor([r[0] for r in plan.ranges])[chunk_of]
    hi = torch.tensor([r[1] for r in plan.ranges])[chunk_of]
    mask = (chunk_of[None, :] >= lo[:, None]) & (chunk_of[None, :] < hi[:, None])  # [S, S], row = query
    return magi_dit._gqa(q, k, val, mask)


@pytest.mark.parametrize("ranges", [None, [(0, 1), (0, 2), (1, 3), (2, 4)]], ids=["causal", "banded"])
def test_chunk_by_chunk_with_the_cache_equals_one_window_forward(ranges, monkeypatch):
    net = network()
    x, t, cap, mask = inputs(net, 4)
    per_chunk = [(0, j + 1) for j in range(4)] if ranges is None else ranges
    with torch.no_grad():
        full = net(x, t, cap, mask, kv_ranges=ranges)
        cache = net.new_cache(H, W)
        outs = [net(chunk(x, j), t[:, j:j + 1], cap, mask, first_chunk=j, kv_ranges=[per_chunk[j]],
                    cache=cache, write=True) for j in range(4)]
        with monkeypatch.context() as m:  # the per-chunk loop equals a masked attention over the window
            m.setattr(magi_dit.ParallelAttention, "_self_attention", staticmethod(masked_self_attention))
            ref = net(x, t, cap, mask, kv_ranges=ranges)
    assert cache.chunks() == (0, 1, 2, 3)
    for j in range(4):
        assert torch.allclose(outs[j], chunk(full, j), atol=1e-5), (j, (outs[j] - chunk(full, j)).abs().max())
    assert torch.allclose(ref, full, atol=1e-5)


def test_a_window_after_cached_chunks_equals_the_full_forward():
    """MAGI's shape of a call: chunks 2..3 attend to cached chunk 1 (a band) plus themselves."""
    net = network()
    x, t, cap, mask = inputs(net, 4)
    ranges = [(0, 1), (0, 2), (1, 3), (1, 4)]
    with torch.no_grad():
        full = net(x, t, cap, mask, kv_ranges=ranges)
        cache = net.new_cache(H, W)
        head = net(chunk(x, 0, 2), t[:, :2], cap, mask, kv_ranges=ranges[:2], cache=cache, write=True)
        cache.evict([0])  # never read again: the band starts at chunk 1
        tail = net(chunk(x, 2, 2), t[:, 2:], cap, mask, first_chunk=2, kv_ranges=ranges[2:], cache=cache)
    assert torch.allclose(head, chunk(full, 0, 2), atol=1e-5)
    assert torch.allclose(tail, chunk(full, 2, 2), atol=1e-5)
    assert cache.chunks() == (1,)


def test_write_false_leaves_the_cache_unchanged_and_snapshots_restore():
    net = network()
    x, t, cap, mask = inputs(net, 2)
    cache = MagiKVCache(net.cfg.num_layers, net.cfg.tokens_per_chunk(H, W))
    with torch.no_grad():
        net(chunk(x, 0), t[:, :1], cap, mask, cache=cache, write=True)
        before = cache.snapshot()
        nbytes = cache.nbytes()
        net(chunk(x, 1), t[:, 1:], cap, mask, first_chunk=1, cache=cache)
        assert cache.chunks() == (0,) and cache.nbytes() == nbytes
        assert all(a[0] is b[0] for a, b in zip(before, cache.snapshot()))
        net(chunk(x, 1), t[:, 1:], cap, mask, first_chunk=1, cache=cache, write=True)
    assert cache.chunks() == (0, 1) and cache.nbytes() == 2 * nbytes
    # [B, tokens, Hkv, 2d] per layer and chunk, float32: 2 layers x 24 x 2 x 32 x 4 bytes
    assert nbytes == 2 * 24 * 2 * 32 * 4
    cache.restore(before)
    assert cache.chunks() == (0,)
    cache.evict([0])
    assert cache.chunks() == () and cache.nbytes() == 0


def test_write_chunks_stores_only_the_named_chunks():
    net = network()
    x, t, cap, mask = inputs(net, 2)
    cache = net.new_cache(H, W)
    with torch.no_grad():
        net(x, t, cap, mask, cache=cache, write=True, write_chunks=[0])
    assert cache.chunks() == (0,)


def test_a_batch_one_cache_serves_a_larger_batch():
    net = network()
    x, t, cap, mask = inputs(net, 2, batch=2)
    cache = net.new_cache(H, W)
    with torch.no_grad():
        net(chunk(x[:1], 0), t[:1, :1], cap[:1], mask[:1], cache=cache, write=True)
        both = net(chunk(x, 1), t[:, 1:], cap, mask, first_chunk=1, cache=cache)
        one = net(chunk(x[1:], 1), t[1:, 1:], cap[1:], mask[1:], first_chunk=1, cache=cache)
    assert torch.allclose(both[1:], one, atol=1e-5)


# ---- conditioning switches --------------------------------------------------------------------


def test_rope_first_frame_sets_the_temporal_positions():
    net = network()
    x, t, cap, mask = inputs(net, 2)
    with torch.no_grad():
        # the unconditional pass: chunk 3 alone, RoPE time restarting at 0, is chunk 0's own forward
        alone = net(chunk(x, 1), t[:, 1:], cap, mask)
        moved = net(chunk(x, 1), t[:, 1:], cap, mask, first_chunk=3, kv_ranges=[(3, 4)], rope_first_frame=0)
        assert torch.allclose(alone, moved, atol=1e-5)
        # with cached context the position matters: the cached chunk sits at frames 0..5
        cache = net.new_cache(H, W)
        net(chunk(x, 0), t[:, :1], cap, mask, cache=cache, write=True)
        at_6 = net(chunk(x, 1), t[:, 1:], cap, mask, first_chunk=1, cache=cache)
        at_6_explicit = net(chunk(x, 1), t[:, 1:], cap, mask, first_chunk=1, cache=cache, rope_first_frame=6)
        at_0 = net(chunk(x, 1), t[:, 1:], cap, mask, first_chunk=1, cache=cache, rope_first_frame=0)
    assert torch.equal(at_6, at_6_explicit)
    assert (at_6 - at_0).abs().max() > 1e-4


def test_dt_changes_the_output_only_when_given():
    net = network()
    x, t, cap, mask = inputs(net, 1)
    with torch.no_grad():
        base, again = net(x, t, cap, mask), net(x, t, cap, mask, dt=None)
        d8, d16 = net(x, t, cap, mask, dt=8.0), net(x, t, cap, mask, dt=16.0)
    assert torch.equal(base, again)
    assert (base - d8).abs().max() > 1e-4 and (d8 - d16).abs().max() > 1e-4


def test_text_false_uses_the_last_adaln_row():
    net = network()
    x, t, cap, mask = inputs(net, 1)
    with torch.no_grad():
        on, off = net(x, t, cap, mask), net(x, t, cap, mask, text=False)
        assert (on - off).abs().max() > 1e-4
        table = net.y_embedder.null_caption_embedding
        table[-1] = table[-2]
        assert torch.equal(net(x, t, cap, mask), net(x, t, cap, mask, text=False))


def test_null_caption_and_an_empty_caption_row():
    net = network()
    emb, mask = net.null_caption(2)
    assert emb.shape == (2, 16, 32) and mask.shape == (2, 16)
    assert mask[:, :4].all() and not mask[:, 4:].any()
    x, t, _, _ = inputs(net, 1, batch=2)
    empty = mask.clone()
    empty[1] = False  # a prefix chunk's caption: no valid token
    with torch.no_grad():
        out = net(x, t, emb, empty)
    assert torch.isfinite(out).all()


def test_half_channel_vae_and_the_world_config():
    half = MagiDiTConfig.tiny(in_channels=8, out_channels=8, half_channel_vae=True, x_rescale_factor=0.1)
    net = network(cfg=half)
    x, t, cap, mask = inputs(net, 1)
    assert x.shape[1] == 4
    with torch.no_grad():
        assert net(x, t, cap, mask).shape == x.shape
    world = network(cfg=MagiDiTConfig.world())
    g = torch.Generator().manual_seed(0)
    xw = torch.randn(1, 8, 6, 16, 16, generator=g)
    capw, maskw = world.null_caption(1)
    with torch.no_grad():
        assert world(xw, torch.rand(1, 1, generator=g), capw, maskw).shape == xw.shape
    assert world.cfg.tokens_per_chunk(16, 16) == 6 * 4 * 4


def test_bad_calls_raise_config_errors():
    net = network()
    x, t, cap, mask = inputs(net, 1)
    with pytest.raises(ConfigError, match="cached"):
        net(x, t, cap, mask, first_chunk=1)  # chunk 0 is needed but nothing is cached
    with pytest.raises(ConfigError, match="write"):
        net(x, t, cap, mask, write=True)
    with pytest.raises(ConfigError, match="kv_ranges"):
        net(x, t, cap, mask, kv_ranges=[(0, 2)])  # reaches past the call


@pytest.mark.parametrize("kw, field", [
    ({"num_query_groups": 3}, "num_query_groups"),
    ({"kv_channels": 12}, "kv_channels"),
    ({"null_caption_tokens": 17}, "null_caption_tokens"),
    ({"t_patch_size": 2}, "t_patch_size"),
    ({"cond_hidden_ratio": 0.001}, "cond_hidden_ratio"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"half_channel_vae": True, "in_channels": 5}, "half_channel_vae"),
])
def test_bad_configs_raise_config_errors(kw, field):
    with pytest.raises(ConfigError) as err:
        MagiDiTConfig.tiny(**kw)
    assert err.value.field == field


# ---- checkpoints --------------------------------------------------------------------------------


def same_outputs(a: MagiDiT, b: MagiDiT) -> bool:
    """Equal weights, bit for bit, and equal outputs (to float noise: kernels may take other paths on
    tensors memory-mapped at other alignments)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa):
        return False
    x, t, cap, mask = inputs(a, 1)
    with torch.no_grad():
        return torch.allclose(a(x, t, cap, mask), b(x, t, cap, mask), atol=1e-6)


def test_sharded_checkpoint_round_trip(tmp_path: Path):
    net = network()
    folder = save_magi_checkpoint(net, tmp_path, shards=3, metadata={"note": "test"})
    assert folder == tmp_path / "inference_weight"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(index["weight_map"]) == set(net.state_dict())
    for path in (tmp_path, folder):
        loaded, info = load_magi_checkpoint(path)
        assert loaded.cfg == net.cfg and info.config_source == "metadata" and len(info.files) == 3
        assert info.metadata["note"] == "test"
        assert same_outputs(net, loaded)


def test_single_file_checkpoint_and_distill_folder(tmp_path: Path):
    base, distill = network(0), network(1)
    save_magi_checkpoint(base, tmp_path)
    save_magi_checkpoint(distill, tmp_path, distill=True)
    assert (tmp_path / "inference_weight" / "model.safetensors").exists()
    got_base, _ = load_magi_checkpoint(tmp_path)
    got_distill, info = load_magi_checkpoint(tmp_path, distill=True)
    assert info.files[0].endswith("inference_weight.distill/model.safetensors")
    assert same_outputs(base, got_base) and same_outputs(distill, got_distill)
    one_file, _ = load_magi_checkpoint(tmp_path / "inference_weight.distill" / "model.safetensors",
                                       dtype=torch.bfloat16)
    assert one_file.x_embedder.weight.dtype == torch.bfloat16


def test_config_from_shapes_and_config_json(tmp_path: Path):
    net = network(cfg=MagiDiTConfig.tiny(gated_linear_unit=True))
    sd = {k: t.detach().contiguous() for k, t in net.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))  # no metadata
    loaded, info = load_magi_checkpoint(tmp_path)
    assert info.config_source == "shapes"
    assert loaded.cfg == MagiDiTConfig.tiny(gated_linear_unit=True, null_caption_tokens=16)
    (tmp_path / "config.json").write_text(json.dumps(attrs.asdict(net.cfg)))
    loaded, info = load_magi_checkpoint(tmp_path)
    assert info.config_source == "config.json" and loaded.cfg == net.cfg
    assert same_outputs(net, loaded)


def test_a_wrong_checkpoint_lists_missing_unexpected_and_misshaped_keys(tmp_path: Path):
    net = network()
    sd = {k: t.detach().contiguous() for k, t in net.state_dict().items()}
    del sd["videodit_blocks.layers.1.mlp_post_norm.bias"]
    sd["videodit_blocks.layers.1.extra.weight"] = torch.zeros(3)
    sd["rope.bands"] = torch.zeros(5)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_magi_checkpoint(tmp_path, net.cfg)
    e = err.value
    assert e.missing == ["videodit_blocks.layers.1.mlp_post_norm.bias"]
    assert e.unexpected == ["videodit_blocks.layers.1.extra.weight"]
    assert e.misshaped == [("rope.bands", (5,), (2,))]
    for name in ("mlp_post_norm.bias", "extra.weight", "rope.bands"):
        assert name in str(e)


def test_a_folder_without_weights_is_a_checkpoint_error(tmp_path: Path):
    save_magi_checkpoint(network(), tmp_path, distill=True)
    with pytest.raises(CheckpointError, match="distill=True"):
        load_magi_checkpoint(tmp_path)


def test_the_spatial_embedding_starts_as_magi_and_then_places_tokens():
    """``spatial_grid`` (the world's addition): at zero it is MAGI-1's network; a nonzero table moves
    each token by its place in the grid (the same in every frame), and shapes name it back."""
    plain = network()
    g = (H // plain.cfg.patch_size, W // plain.cfg.patch_size)
    cfg = attrs.evolve(plain.cfg, spatial_grid=g)
    grid = MagiDiT(cfg).eval()
    missing = grid.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["spatial_embedding"]
    x, t, cap, mask = inputs(plain, chunks=2)
    with torch.no_grad():
        assert torch.equal(grid(x, t, cap, mask), plain(x, t, cap, mask))
        grid.spatial_embedding.normal_(0.0, 0.5)
        moved = grid(x, t, cap, mask)
    assert not torch.allclose(moved, plain(x, t, cap, mask), atol=1e-4)
    assert magi_dit.MagiDiTConfig(**attrs.asdict(cfg)).spatial_grid == g
    from accelframe_adapters.magi.checkpoints import config_from_shapes

    assert config_from_shapes(shapes_of(grid)).spatial_grid == g
    assert config_from_shapes(shapes_of(plain)).spatial_grid is None


def test_a_spatial_embedding_refuses_another_token_grid_and_bad_grids():
    p = MagiDiTConfig.tiny().patch_size
    net = MagiDiT(attrs.evolve(network().cfg, spatial_grid=(H // p + 1, W // p))).eval()
    x, t, cap, mask = inputs(net, chunks=1)
    with pytest.raises(ConfigError, match="token grid"):
        net(x, t, cap, mask)
    for bad in ((4,), (0, 4), (True, 4)):
        with pytest.raises(ConfigError, match="spatial_grid"):
            attrs.evolve(net.cfg, spatial_grid=bad)
