"""Wan DiT checkpoints in every layout the families read: Self-Forcing ``.pt`` (EMA or not), Krea
``model.``-prefixed safetensors, SkyReels-V2 diffusers folders (one file or shards, written by
diffusers itself) and original-layout files and shard folders. Each loads into a network that
computes what the saved one computed; each wrong checkpoint is a CheckpointError naming what is
wrong; sizes are inferred from shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import save_file

from accelframe.errors import CheckpointError
from accelframe_adapters.wan.krea import KreaAdapter
from accelframe_adapters.wan.self_forcing import SelfForcingAdapter
from accelframe_adapters.wan.skyreels_df import SkyReelsDFAdapter
from accelframe_adapters.wan.dit import WanDiT, WanDiTConfig, diffusers_config, to_diffusers_key
from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig

StateDict = dict[str, torch.Tensor]


# ---- helpers ------------------------------------------------------------------------------------


def network(seed: int, cfg: WanDiTConfig | None = None) -> WanDiT:
    """A tiny DiT with random weights, norm gains and biases included (no trivial path)."""
    torch.manual_seed(seed)
    net = WanDiT(cfg or WanDiTConfig.tiny()).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def state(net: WanDiT) -> StateDict:
    return {k: t.detach().clone().contiguous() for k, t in net.state_dict().items()}


def prefixed(sd: StateDict) -> StateDict:
    return {"model." + k: t for k, t in sd.items()}


def save_self_forcing(path: Path, generator: StateDict, ema: StateDict | None = None) -> Path:
    obj = {"generator": prefixed(generator)}
    if ema is not None:
        obj["generator_ema"] = prefixed(ema)
    torch.save(obj, path)
    return path


def save_krea(path: Path, sd: StateDict) -> Path:
    save_file(prefixed(sd), str(path))
    return path


def inputs(cfg: WanDiTConfig, frames: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, cfg.in_dim, frames, 8, 8, generator=g)  # [B, C, F, H, W]
    t = torch.tensor([[999.0, 500.0, 0.0], [250.0, 750.0, 10.0]])[:, :frames]  # [B, F]
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)  # [B, L, text_dim]
    return x, t, ctx


@torch.no_grad()
def assert_same_network(loaded: WanDiT, src: WanDiT, **kw) -> None:
    assert loaded.cfg.num_heads == src.cfg.num_heads
    x, t, ctx = inputs(src.cfg)
    want = src(x, t, ctx, **kw)
    got = loaded(x, t, ctx, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for k, p in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], p), k


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The networks are tiny: a second thread only adds synchronisation (slow on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def src() -> WanDiT:
    return network(0)


@pytest.fixture(scope="module")
def src_sky() -> WanDiT:
    """A SkyReels-V2 network: fps embedding on, and not the tiny head count (4 heads of 8)."""
    return network(1, WanDiTConfig.tiny(inject_sample_info=True, num_heads=4))


# ---- Self-Forcing .pt ---------------------------------------------------------------------------


def test_self_forcing_pt_loads_ema_by_default_and_generator_on_request(tmp_path, src):
    other = network(5)
    path = save_self_forcing(tmp_path / "self_forcing_dmd.pt", generator=state(other), ema=state(src))
    key = "blocks.1.self_attn.q.weight"
    assert not torch.equal(other.state_dict()[key], src.state_dict()[key])

    ema = SelfForcingAdapter(checkpoint=str(path))
    assert ema.config.use_ema
    assert torch.equal(ema.dit.state_dict()[key], src.state_dict()[key])
    assert_same_network(ema.dit, src)
    assert ema.dit.cfg == WanDiTConfig.tiny()

    plain = SelfForcingAdapter(checkpoint=str(path), use_ema=False)
    assert torch.equal(plain.dit.state_dict()[key], other.state_dict()[key])
    assert_same_network(plain.dit, other)


def test_self_forcing_pt_without_ema_falls_back_to_generator(tmp_path, src):
    path = save_self_forcing(tmp_path / "ode_init.pt", generator=state(src))
    assert_same_network(SelfForcingAdapter(checkpoint=str(path)).dit, src)


def test_self_forcing_pt_is_read_weights_only(tmp_path):
    _SPRUNG.clear()
    path = tmp_path / "trap.pt"
    torch.save({"generator": {"model.x": torch.zeros(1)}, "extra": _Trap()}, path)
    with pytest.raises(CheckpointError, match="weights-only") as err:
        SelfForcingAdapter(checkpoint=str(path))
    assert str(path) in str(err.value)
    assert _SPRUNG == []  # nothing was unpickled into a call


_SPRUNG: list[str] = []


def _spring(what: str) -> None:
    _SPRUNG.append(what)


class _Trap:
    """Unpickling this calls a function: what weights_only refuses to do."""

    def __reduce__(self):
        return (_spring, ("unpickled",))


# ---- Krea safetensors ---------------------------------------------------------------------------


def test_krea_safetensors_loads(tmp_path, src):
    path = save_krea(tmp_path / "krea-realtime-video-14b.safetensors", state(src))
    adapter = KreaAdapter(checkpoint=str(path))
    assert adapter.dit.cfg == WanDiTConfig.tiny()
    assert_same_network(adapter.dit, src)


def test_saved_random_tiny_adapter_loads_as_itself(tmp_path):
    """The random tiny adapter's network, saved and reloaded, is the same network (head count and
    text length included, which shapes alone do not give)."""
    made = KreaAdapter(size="tiny", init_seed=3)
    path = save_krea(tmp_path / "tiny.safetensors", state(made.dit))
    again = KreaAdapter(checkpoint=str(path))
    assert again.dit.cfg == made.dit.cfg
    assert_same_network(again.dit, made.dit)


# ---- SkyReels-V2: diffusers layout ----------------------------------------------------------------


def save_diffusers(folder: Path, net: WanDiT, max_shard_size: int | str = "10GB") -> Path:
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.SkyReelsV2Transformer3DModel(**diffusers_config(net.cfg))
    mapped = {to_diffusers_key(k): t for k, t in state(net).items()}
    missing, unexpected = model.load_state_dict(mapped, strict=True)
    assert not missing and not unexpected
    model.save_pretrained(str(folder), max_shard_size=max_shard_size, safe_serialization=True)
    return folder


def param_bytes(net: WanDiT) -> int:
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def test_skyreels_diffusers_sharded_folder_loads(tmp_path, src_sky):
    pytest.importorskip("diffusers")
    folder = save_diffusers(tmp_path / "SkyReels-V2-DF-1.3B-540P-Diffusers" / "transformer", src_sky,
                            max_shard_size=param_bytes(src_sky) // 4)
    shards = sorted(p.name for p in folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) >= 3, shards
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "SkyReelsV2Transformer3DModel" and config["num_attention_heads"] == 4

    adapter = SkyReelsDFAdapter(checkpoint=str(folder))
    assert adapter.dit.cfg.inject_sample_info and adapter.dit.cfg.num_heads == 4
    assert_same_network(adapter.dit, src_sky, fps=1)
    assert_same_network(adapter.dit, src_sky, fps=0)


def test_skyreels_diffusers_single_file_loads(tmp_path, src_sky):
    pytest.importorskip("diffusers")
    folder = save_diffusers(tmp_path / "transformer", src_sky)
    assert [p.name for p in folder.glob("*.safetensors")] == ["diffusion_pytorch_model.safetensors"]
    assert not list(folder.glob("*.index.json"))
    for path in (folder, folder / "diffusion_pytorch_model.safetensors"):  # the folder or the file
        adapter = SkyReelsDFAdapter(checkpoint=str(path))
        assert_same_network(adapter.dit, src_sky, fps=1)


def test_skyreels_diffusers_without_fps_embedding_loads(tmp_path, src):
    pytest.importorskip("diffusers")
    folder = save_diffusers(tmp_path / "transformer", src)
    adapter = SkyReelsDFAdapter(checkpoint=str(folder))
    assert not adapter.dit.cfg.inject_sample_info
    assert_same_network(adapter.dit, src)


# ---- SkyReels-V2: original layout -----------------------------------------------------------------


def original_config(cfg: WanDiTConfig) -> dict:
    return {"model_type": "t2v", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "in_dim": cfg.in_dim,
            "out_dim": cfg.out_dim, "text_len": cfg.text_len, "eps": cfg.eps,
            "patch_size": list(cfg.patch_size), "qk_norm": cfg.qk_norm,
            "cross_attn_norm": cfg.cross_attn_norm, "inject_sample_info": cfg.inject_sample_info}


def test_skyreels_original_shards_in_a_folder_load(tmp_path, src_sky):
    folder = tmp_path / "SkyReels-V2-DF-1.3B-540P"
    folder.mkdir()
    sd = state(src_sky)
    keys = sorted(sd)
    half = math.ceil(len(keys) / 2)
    for i, part in enumerate((keys[:half], keys[half:]), start=1):
        save_file({k: sd[k] for k in part}, str(folder / f"model-{i:05d}-of-00002.safetensors"))
    (folder / "config.json").write_text(json.dumps(original_config(src_sky.cfg)))

    adapter = SkyReelsDFAdapter(checkpoint=str(folder))
    assert adapter.dit.cfg == src_sky.cfg  # head count and text length from config.json
    assert_same_network(adapter.dit, src_sky, fps=1)


def test_skyreels_original_single_file_loads(tmp_path, src):
    path = tmp_path / "model.safetensors"
    save_file(state(src), str(path))
    adapter = SkyReelsDFAdapter(checkpoint=str(path))
    assert adapter.dit.cfg == WanDiTConfig.tiny()
    assert_same_network(adapter.dit, src)


# ---- errors ---------------------------------------------------------------------------------------


def spoiled(sd: StateDict) -> StateDict:
    """One key missing, one unexpected, one misshaped."""
    out = dict(sd)
    del out["blocks.1.cross_attn.o.weight"]
    out["blocks.0.self_attn.lora_up.weight"] = torch.zeros(4, 32)
    out["blocks.1.self_attn.q.bias"] = torch.zeros(31)
    return out


@pytest.mark.parametrize("family", ["self-forcing", "krea-realtime", "skyreels-v2-df"])
def test_missing_unexpected_and_misshaped_keys_are_all_named(tmp_path, src, family):
    sd = spoiled(state(src))
    if family == "self-forcing":
        path, cls = save_self_forcing(tmp_path / "bad.pt", sd, sd), SelfForcingAdapter
    elif family == "krea-realtime":
        path, cls = save_krea(tmp_path / "bad.safetensors", sd), KreaAdapter
    else:
        path, cls = tmp_path / "model.safetensors", SkyReelsDFAdapter
        save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        cls(checkpoint=str(path))
    e, msg = err.value, str(err.value)
    assert e.missing == ["blocks.1.cross_attn.o.weight"]
    assert e.unexpected == ["blocks.0.self_attn.lora_up.weight"]
    assert e.misshaped == [("blocks.1.self_attn.q.bias", (31,), (32,))]
    for name in ("blocks.1.cross_attn.o.weight", "blocks.0.self_attn.lora_up.weight",
                 "blocks.1.self_attn.q.bias", "(31,)", "(32,)", str(path), family):
        assert name in msg, (name, msg)


def test_missing_key_the_sizes_are_read_from_is_a_checkpoint_error(tmp_path, src):
    sd = state(src)
    del sd["head.head.weight"]
    path = save_krea(tmp_path / "no_head.safetensors", sd)
    with pytest.raises(CheckpointError, match="head.head.weight") as err:
        KreaAdapter(checkpoint=str(path))
    assert err.value.missing == ["head.head.weight"]


def test_stray_unprefixed_keys_are_named(tmp_path, src):
    sd = prefixed(state(src))
    sd["lora.alpha"] = torch.ones(1)
    path = tmp_path / "mixed.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="lora.alpha"):
        KreaAdapter(checkpoint=str(path))
    torch.save({"generator_ema": sd}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="lora.alpha"):
        SelfForcingAdapter(checkpoint=str(tmp_path / "mixed.pt"))


@pytest.fixture
def krea_file(tmp_path, src) -> Path:
    return save_krea(tmp_path / "krea.safetensors", state(src))


@pytest.fixture
def self_forcing_file(tmp_path, src) -> Path:
    return save_self_forcing(tmp_path / "self_forcing.pt", state(src), state(src))


def test_krea_checkpoint_given_to_self_forcing_names_the_krea_adapter(krea_file):
    with pytest.raises(CheckpointError) as err:
        SelfForcingAdapter(checkpoint=str(krea_file))
    assert "krea" in str(err.value) and "'krea-realtime' adapter" in str(err.value)


def test_self_forcing_checkpoint_given_to_krea_names_the_self_forcing_adapter(self_forcing_file):
    with pytest.raises(CheckpointError) as err:
        KreaAdapter(checkpoint=str(self_forcing_file))
    assert "'self-forcing' adapter" in str(err.value)


def test_causal_checkpoints_given_to_skyreels_name_their_adapter(self_forcing_file, krea_file):
    with pytest.raises(CheckpointError) as err:
        SkyReelsDFAdapter(checkpoint=str(self_forcing_file))
    assert "'self-forcing' adapter" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        SkyReelsDFAdapter(checkpoint=str(krea_file))
    assert "'krea-realtime' adapter" in str(err.value)


def test_original_and_diffusers_checkpoints_given_to_causal_families_name_skyreels(tmp_path, src):
    path = tmp_path / "model.safetensors"
    save_file(state(src), str(path))
    diffusers = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({to_diffusers_key(k): t for k, t in state(src).items()}, str(diffusers))
    for cls in (SelfForcingAdapter, KreaAdapter):
        for p in (path, diffusers):
            with pytest.raises(CheckpointError, match="'skyreels-v2-df' adapter"):
                cls(checkpoint=str(p))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_vae_given_as_dit_checkpoint_says_it_is_a_vae(tmp_path, suffix):
    sd = {k: t.contiguous() for k, t in WanVAE(WanVAEConfig.tiny()).state_dict().items()}
    path = tmp_path / f"Wan2.1_VAE{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    for cls in (SelfForcingAdapter, KreaAdapter, SkyReelsDFAdapter):
        with pytest.raises(CheckpointError) as err:
            cls(checkpoint=str(path))
        assert "VAE" in str(err.value) and "vae=" in str(err.value), str(err.value)


def test_unknown_tensors_are_not_a_dit(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a Wan DiT checkpoint") as err:
        SkyReelsDFAdapter(checkpoint=str(path))
    assert "conv.weight" in str(err.value)


@pytest.mark.parametrize("size", ["1.3B", "14B"])
def test_checkpoint_of_another_size_names_both_sizes(krea_file, self_forcing_file, size):
    for cls, path in ((KreaAdapter, krea_file), (SelfForcingAdapter, self_forcing_file)):
        with pytest.raises(CheckpointError) as err:
            cls(checkpoint=str(path), size=size)
        msg = str(err.value)
        assert "tiny" in msg and repr(size) in msg and "2 layers of dim 32" in msg, msg


def test_nonexistent_path(tmp_path):
    path = tmp_path / "nowhere" / "model.safetensors"
    for cls in (SelfForcingAdapter, KreaAdapter, SkyReelsDFAdapter):
        with pytest.raises(CheckpointError, match="no such file") as err:
            cls(checkpoint=str(path))
        assert str(path) in str(err.value)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="unknown weight format") as err:
        KreaAdapter(checkpoint=str(path))
    assert ".safetensors" in str(err.value) and ".pt" in str(err.value)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        KreaAdapter(checkpoint=str(bad))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        SelfForcingAdapter(checkpoint=str(tensor))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no .safetensors"):
        SkyReelsDFAdapter(checkpoint=str(empty))


def test_shard_named_by_the_index_but_missing(tmp_path, src):
    folder = tmp_path / "transformer"
    folder.mkdir()
    sd = {to_diffusers_key(k): t for k, t in state(src).items()}
    save_file(sd, str(folder / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    index = {"weight_map": {k: "diffusion_pytorch_model-00001-of-00002.safetensors" for k in sd}}
    index["weight_map"]["proj_out.bias"] = "diffusion_pytorch_model-00002-of-00002.safetensors"
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing") as err:
        SkyReelsDFAdapter(checkpoint=str(folder))
    assert "00002-of-00002" in str(err.value)


def test_diffusers_config_of_another_class(tmp_path, src):
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file({to_diffusers_key(k): t for k, t in state(src).items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(CheckpointError, match="AutoencoderKLWan"):
        SkyReelsDFAdapter(checkpoint=str(folder))


# ---- size inference -------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"qk_norm": False, "cross_attn_norm": False}, {"inject_sample_info": True},
                                {"num_layers": 3, "ffn_dim": 48, "in_dim": 8, "out_dim": 6},
                                {"patch_size": (1, 1, 2)}])
def test_from_state_dict_recovers_tiny_configs(kw):
    cfg = WanDiTConfig.tiny(**kw)
    with torch.device("meta"):
        sd = WanDiT(cfg).state_dict()
    # num_heads and text_len are not in any shape: passed through
    assert WanDiTConfig.from_state_dict(sd, num_heads=cfg.num_heads, text_len=cfg.text_len) == cfg
    # without them: dim // 128 heads (at least one) and the released text length
    guessed = WanDiTConfig.from_state_dict(sd)
    assert guessed == attrs.evolve(cfg, num_heads=1, text_len=512)


def test_from_state_dict_head_count_rule_for_other_dims():
    with torch.device("meta"):
        sd = WanDiT(WanDiTConfig.tiny(dim=512, num_heads=8)).state_dict()
    assert WanDiTConfig.from_state_dict(sd).num_heads == 4  # 512 // 128
    assert WanDiTConfig.from_state_dict(sd, num_heads=8).num_heads == 8


@pytest.mark.parametrize("make, heads, layers", [(WanDiTConfig.wan_1_3b, 12, 30), (WanDiTConfig.wan_14b, 40, 40)])
def test_from_state_dict_recovers_the_released_sizes(make, heads, layers):
    with torch.device("meta"):  # the released sizes, without allocating them
        sd = WanDiT(make()).state_dict()
    assert all(t.is_meta for t in sd.values())
    cfg = WanDiTConfig.from_state_dict(sd)
    assert cfg == make()
    assert (cfg.num_heads, cfg.num_layers, cfg.head_dim) == (heads, layers, 128)
    assert cfg.size_name == ("1.3B" if layers == 30 else "14B")


def test_vae_checkpoint_loads_into_an_adapter_and_a_wrong_width_is_refused(tmp_path):
    from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig

    src = SelfForcingAdapter(size="tiny", height=32, width=32, init_seed=7)
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(src.vae.state_dict(), path)
    loaded = SelfForcingAdapter(size="tiny", height=32, width=32, vae=str(path))
    z = torch.randn(1, 2, *src.latent_shape, generator=torch.Generator().manual_seed(0))
    st_a, st_b = src.init_state(None, None), loaded.init_state(None, None)
    assert torch.equal(src.decode(z, st_a), loaded.decode(z, st_b))
    wide = tmp_path / "wide.pth"
    torch.save(WanVAE(WanVAEConfig.tiny()).state_dict(), wide)  # 16 latent channels, the tiny DiT takes 4
    with pytest.raises(CheckpointError, match="16 latent channels"):
        SelfForcingAdapter(size="tiny", height=32, width=32, vae=str(wide))
