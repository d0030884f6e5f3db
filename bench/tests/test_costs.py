"""The cost tables of ``accelframe bench costs`` (issue 23 item 6): pricing, the H100 calibration, the
FLOPs ratios, the VAE's counted FLOPs against a hand count, the ImageReward estimate, and the command."""

from __future__ import annotations

import argparse
import json

import pytest

from accelframe import cli
from accelframe.errors import ConfigError
from accelframe.plugins import create_hooks
from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig
from accelframe_adapters.wan.dit import WanDiTConfig
from accelframe_bench import costs
from accelframe_bench import plugin as bench_plugin
from accelframe_bench.costs import CostTable, Counts, counts_of, price


def _table(**kw) -> CostTable:
    base = dict(config="hand", target_call_s=1.0, drafter_call_s=0.1, target_commit_s=0.5, drafter_commit_s=0.05,
                decode_per_latent_frame_s=0.2, score_per_pixel_frame_s=0.01, source="by hand")
    return CostTable(**{**base, **kw})


def test_price_sums_every_component_at_its_cost():
    c = Counts(target_calls=4, drafter_calls=8, target_commits=1, drafter_commits=2, decoded_latent_frames=3,
               scored_pixel_frames=12)
    # 4 + 0.8 + 0.5 + 0.1 + 0.6 + 0.12
    assert price(c, _table()) == pytest.approx(6.12)
    assert price(c + c, _table()) == pytest.approx(12.24)
    assert price(Counts(), _table()) == 0.0


def test_counts_of_reads_a_runs_stats():
    stats = {"calls": {"target": {"computed": 5, "commit": 2}, "drafter": {"computed": 7, "commit": 3}},
             "blocks": {"accepted": 2, "regenerated": 1, "decodes_wasted": 1}, "frames": 9}
    c = counts_of(stats, unit_latent_frames=3, unit_pixel_frames=12)
    assert c == Counts(target_calls=5, drafter_calls=7, target_commits=2, drafter_commits=3,
                       decoded_latent_frames=12, scored_pixel_frames=36)


def test_the_calibration_call_costs_the_measured_78_ms():
    # the Wan 1.3B DiT (d 1536, FFN 8960, 30 layers, 512 text tokens, patch 16 x 4) over 4680 tokens attending
    # to 9360 on average, counted by hand
    d, f, t, kv = 1536, 8960, 4680, 9360
    layer = 8 * t * d * d + 4 * t * kv * d + 4 * t * d * d + 4 * t * 512 * d + 4 * t * d * f
    hand = 30 * layer + 4 * t * d * 64
    assert costs.calibration_flops() == hand
    assert costs.calibration_flops() / costs.throughput() == pytest.approx(0.078, rel=1e-12)


def test_self_forcing_call_is_78_ms_scaled_by_its_longer_context():
    t = costs.table("self-forcing-1.3B@832x480")
    # the protocol's 9 blocks attend to 3, 6, ..., 21, 21, 21 frames (the release's 21-frame cache): 14 on average
    assert costs._self_forcing_kv_frames() == 14
    ratio = WanDiTConfig.wan_1_3b().flops(4680, 14 * 1560) / WanDiTConfig.wan_1_3b().flops(4680, 6 * 1560)
    assert t.target_call_s == pytest.approx(0.078 * ratio, rel=1e-12)
    assert t.drafter_call_s == t.target_call_s == t.target_commit_s
    assert t.source == costs.SOURCE and "78 ms" in t.source and "H100" in t.source
    assert t.detail["flops"]["target_call"] == pytest.approx(t.target_call_s * t.detail["throughput_flops_per_s"])


def test_a_14b_call_over_a_13b_call_is_their_flops_ratio():
    t = costs.table("skyreels-v2-14B@540P")
    n = 25 * (544 // 16) * (960 // 16)  # the 97-pixel-frame window
    assert t.target_call_s / t.drafter_call_s == pytest.approx(
        WanDiTConfig.wan_14b().flops(n, n) / WanDiTConfig.wan_1_3b().flops(n, n), rel=1e-12)
    # guidance_scale 6.0: two passes
    assert t.target_call_s == pytest.approx(2 * WanDiTConfig.wan_14b().flops(n, n) / costs.throughput())
    assert t.target_commit_s == 0.0  # no KV cache: no commit
    k = costs.table("krea-14B@832x480")
    assert k.target_commit_s == pytest.approx(WanDiTConfig.wan_14b().flops(4680, 4680) / costs.throughput())
    assert k.drafter_call_s == costs.table("self-forcing-1.3B@832x480").target_call_s


def test_vae_decode_flops_scale_with_pixels_apart_from_the_middle_attention():
    small, wide, tall = (costs.vae_decode_flops(h, w, base_dim=8) for h, w in ((4, 4), (4, 8), (8, 4)))
    assert wide == tall
    # convolutions scale with pixels exactly; the decoder's one attention layer (width 4 x base_dim = 32, over
    # the h w latent tokens of each of the 3 frames) with their square: QK^T and AV, 4 N^2 C each frame
    n, c = 16, 32
    assert wide - 2 * small == 3 * (4 * (2 * n) ** 2 * c - 2 * 4 * n ** 2 * c)
    # every latent frame after the first costs the same
    assert costs.vae_decode_flops(4, 4, frames=1, base_dim=8) * 3 == small


def test_vae_decode_of_the_released_vae_at_480x832():
    # 40.65 TFLOPs for 3 latent frames, counted once on the meta device (cached per size)
    assert costs.vae_decode_flops(60, 104) == pytest.approx(40.65e12, rel=1e-3)
    t = costs.table("self-forcing-1.3B@832x480")
    assert t.decode_per_latent_frame_s == pytest.approx(costs.vae_decode_flops(60, 104) / 3 / costs.throughput())


def test_image_reward_estimate():
    # ViT-L/16 at 224: 61.6 GMACs as published (timm); the text side is small beside it
    assert costs.vit_l16_flops() == pytest.approx(2 * 61.6e9, rel=0.01)
    assert costs.bert_cross_flops() < 0.2 * costs.vit_l16_flops()
    assert costs.bert_cross_flops(70) > costs.bert_cross_flops(35)
    t = costs.table("magi-1-4.5B")
    assert t.score_per_pixel_frame_s == pytest.approx(costs.image_reward_flops() / costs.throughput())


def test_magi_pass_flops_match_the_networks_linear_layers():
    cfg = MagiDiTConfig.tiny()
    import torch

    with torch.device("meta"):
        dit = MagiDiT(cfg)
    per_token = sum(m.weight.numel() for name, m in dit.named_modules()
                    if isinstance(m, torch.nn.Linear) and (".linear_qkv." in name or name.endswith(
                        ("linear_proj", "linear_fc1", "linear_fc2")) or name == "final_linear.linear"))
    per_token += dit.x_embedder.weight.numel()
    tok, w = 4, 2  # tokens per latent frame, chunk width
    ctn = tok * w
    hq = cfg.num_attention_heads * cfg.kv_channels
    # two chunks attending to 2 and 1 chunks, no caption: linear layers plus the attention scores and sums
    attn = cfg.num_layers * (4 * ctn * 2 * ctn * hq + 4 * ctn * ctn * hq)
    assert costs.magi_pass_flops(cfg, tok, w, (2, 1), caption_tokens=0) == 2 * per_token * 2 * ctn + attn


def test_unknown_configuration_is_refused_with_the_valid_names():
    with pytest.raises(ConfigError) as info:
        costs.table("wan-99B")
    msg = str(info.value)
    assert "wan-99B" in msg
    for name in costs.CONFIGS:
        assert name in msg


def test_every_configuration_has_its_assumptions():
    for name in costs.CONFIGS:
        t = costs.table(name)
        assert t.config == name
        assert t.target_call_s >= t.drafter_call_s > 0
        assert {"config", "throughput", "decode", "score", "drafter"} <= set(t.detail["assumptions"])
    assert "uncertain" in costs.table("magi-1-4.5B").detail["assumptions"]["decode"]


def test_bench_costs_command_json(capsys, monkeypatch):
    hooks = create_hooks(autoload=False, plugins=(bench_plugin,))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda **kw: create_hooks(**kw) if kw else hooks)
    assert cli.main(["bench", "costs", "--config", "krea-14B@832x480", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["krea-14B@832x480"]
    row = doc["krea-14B@832x480"]
    assert row["target_call_s"] == pytest.approx(costs.table("krea-14B@832x480").target_call_s)
    assert row["source"] == costs.SOURCE
    assert cli.main(["bench", "costs", "--config", "krea-14B@832x480"]) == 0
    text = capsys.readouterr().out
    assert "| krea-14B@832x480 | 569.9 |" in text and costs.SOURCE in text


def test_bench_costs_refuses_an_unknown_config():
    p = argparse.ArgumentParser(prog="accelframe bench costs")
    costs.configure(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--config", "nope"])


def test_measured_tables_compose_their_passes_as_the_flops_tables_assume():
    """Each measured table's calls are the measured passes composed as the FLOPs table's assumptions say
    (SkyReels' two guidance passes, MAGI's three), and its score is the FLOPs estimate's."""
    from accelframe_bench import measured_costs as mc

    p = mc.PASSES
    for name in costs.CONFIGS:
        t = costs.measured(name)
        assert t is not None and t.config == name and t.source == mc.SOURCE
        assert t.score_per_pixel_frame_s == costs.table(name).score_per_pixel_frame_s
        assert t.target_call_s >= t.drafter_call_s > 0
    sky, magi, krea = (costs.measured(n) for n in ("skyreels-v2-14B@540P", "magi-1-4.5B", "krea-14B@832x480"))
    assert sky.target_call_s == pytest.approx(2 * p["14B 960x544 window of 25, one pass"], rel=1e-3)
    assert sky.drafter_call_s == pytest.approx(2 * p["1.3B 960x544 window of 25, one pass"], rel=1e-3)
    assert magi.target_call_s == pytest.approx(
        2 * p["MAGI-1 4.5B 720x720 window"] + p["MAGI-1 4.5B 720x720 alone"], rel=1e-3)
    assert magi.drafter_call_s == pytest.approx(p["MAGI-1 4.5B 720x720 window"] + p["MAGI-1 4.5B 720x720 one"],
                                                rel=1e-3)
    assert krea.drafter_call_s == p["1.3B 832x480 block of 3, 11 cached frames"]
    assert krea.decode_per_latent_frame_s == mc.DECODE["832x480"]["bfloat16"]
    assert costs.measured("wan-99B") is None


def test_project_prices_with_the_measured_table_unless_flops_is_asked_for():
    name = "krea-14B@832x480"
    assert costs.cost_table(name, "bench block") == costs.measured(name)
    assert costs.cost_table(name + ":measured", "bench block") == costs.measured(name)
    assert costs.cost_table(name + ":flops", "bench block") == costs.table(name)
    assert costs.cost_table(name + ":flops", "bench block").source == costs.SOURCE
    for bad in ("krea-14B@832x480:guess", "wan-99B:flops"):
        with pytest.raises(ConfigError) as info:
            costs.cost_table(bad, "bench block")
        assert info.value.field == "--project" and name + ":flops" in str(info.value.allowed)


def test_bench_costs_source_measured(capsys, monkeypatch):
    from accelframe_bench import measured_costs as mc

    hooks = create_hooks(autoload=False, plugins=(bench_plugin,))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda **kw: create_hooks(**kw) if kw else hooks)
    assert cli.main(["bench", "costs", "--source", "measured", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == list(costs.CONFIGS)
    assert doc["krea-14B@832x480"]["target_call_s"] == mc.SECONDS["krea-14B@832x480"]["target_call_s"]
    assert cli.main(["bench", "costs", "--source", "measured", "--config", "magi-1-4.5B"]) == 0
    text = capsys.readouterr().out
    assert "| magi-1-4.5B | 6945.0 |" in text and mc.SOURCE in text
