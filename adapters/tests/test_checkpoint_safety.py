"""Checkpoint loading refuses what is not weights: non-finite or non-float tensors, a model that lost
its last blocks, shard names outside their folder, and malformed metadata. Each is a CheckpointError
that names the file and what is wrong (issue 20, items 2-4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from accelframe.errors import CheckpointError
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.wan.krea import KreaAdapter
from accelframe_adapters.magi.checkpoints import config_from_shapes, load_magi_checkpoint, save_magi_checkpoint
from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig
from accelframe_adapters.wan.self_forcing import SelfForcingAdapter
from accelframe_adapters.wan.skyreels_df import SkyReelsDFAdapter
from accelframe_adapters.wan.dit import WanDiT, WanDiTConfig, to_diffusers_key
from accelframe_adapters.world import models as world

StateDict = dict[str, torch.Tensor]
SMALL = {"size": "tiny", "height": 32, "width": 32}


@pytest.fixture(scope="module")
def wan_sd() -> StateDict:
    torch.manual_seed(0)
    return {k: t.detach().clone().contiguous() for k, t in WanDiT(WanDiTConfig.tiny()).state_dict().items()}


@pytest.fixture(scope="module")
def magi_net() -> MagiDiT:
    torch.manual_seed(0)
    return MagiDiT(MagiDiTConfig.tiny()).eval()


def save_krea(path: Path, sd: StateDict) -> str:
    save_file({"model." + k: t for k, t in sd.items()}, str(path))
    return str(path)


def save_diffusers_folder(folder: Path, sd: StateDict, shard_names: dict[str, str] | None = None) -> Path:
    """A diffusers transformer folder: one shard in the folder and an index; ``shard_names`` maps a
    key to another shard name (written by the caller)."""
    folder.mkdir(parents=True, exist_ok=True)
    dsd = {to_diffusers_key(k): t for k, t in sd.items()}
    save_file(dsd, str(folder / "diffusion_pytorch_model-00001-of-00001.safetensors"))
    index = {"metadata": {}, "weight_map": {k: "diffusion_pytorch_model-00001-of-00001.safetensors" for k in dsd}}
    index["weight_map"].update(shard_names or {})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return folder


# ---- item 2: weights that are not weights -------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_wan_weights_are_refused_naming_the_key(tmp_path, wan_sd, bad):
    sd = dict(wan_sd)
    key = "blocks.1.ffn.2.weight"
    sd[key] = sd[key].clone()
    sd[key][0, 0] = bad
    with pytest.raises(CheckpointError, match="non-finite") as err:
        KreaAdapter(checkpoint=save_krea(tmp_path / "k.safetensors", sd), **SMALL)
    assert key in str(err.value) and "k.safetensors" in str(err.value)


def test_an_all_nan_self_forcing_checkpoint_is_refused(tmp_path, wan_sd):
    path = tmp_path / "sf.pt"
    torch.save({"generator": {"model." + k: torch.full_like(t, float("nan")) for k, t in wan_sd.items()}}, path)
    with pytest.raises(CheckpointError, match="non-finite"):
        SelfForcingAdapter(checkpoint=str(path), **SMALL)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_and_bool_wan_weights_are_refused(tmp_path, wan_sd, dtype):
    sd = dict(wan_sd)
    key = "head.head.bias"
    sd[key] = sd[key].to(dtype)
    with pytest.raises(CheckpointError, match="floating") as err:
        KreaAdapter(checkpoint=save_krea(tmp_path / "k.safetensors", sd), **SMALL)
    assert key in str(err.value) and str(dtype).removeprefix("torch.") in str(err.value)


def test_non_finite_world_weights_are_refused(tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(world.weights_path("vae")))
    key = sorted(sd)[3]
    sd[key] = torch.full_like(sd[key], float("nan"))
    path = tmp_path / "vae.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="non-finite") as err:
        world.load_vae(path)
    assert key in str(err.value)


def test_non_finite_and_integer_magi_weights_are_refused(tmp_path, magi_net):
    folder = save_magi_checkpoint(magi_net, tmp_path / "nan")
    from safetensors.torch import load_file

    f = folder / "model.safetensors"
    sd = load_file(str(f))
    key = "videodit_blocks.layers.1.mlp.linear_fc2.weight"
    sd[key][1, 1] = float("nan")
    save_file(sd, str(f), metadata={"config": json.dumps(attrs_dict(magi_net.cfg))})
    with pytest.raises(CheckpointError, match="non-finite") as err:
        load_magi_checkpoint(tmp_path / "nan")
    assert key in str(err.value)


def attrs_dict(cfg) -> dict:
    import attrs

    return attrs.asdict(cfg)


def test_int32_magi_weights_are_a_checkpoint_error(tmp_path, magi_net):
    from safetensors.torch import load_file

    folder = save_magi_checkpoint(magi_net, tmp_path)
    f = folder / "model.safetensors"
    sd = {k: t.to(torch.int32) for k, t in load_file(str(f)).items()}
    save_file(sd, str(f), metadata={"config": json.dumps(attrs_dict(magi_net.cfg))})
    with pytest.raises(CheckpointError, match="floating") as err:
        load_magi_checkpoint(tmp_path)
    assert "int32" in str(err.value)


def test_a_tiny_checkpoint_missing_its_last_block_is_not_a_smaller_model(tmp_path, wan_sd):
    sd = {k: t for k, t in wan_sd.items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match="layers") as err:
        KreaAdapter(checkpoint=save_krea(tmp_path / "k.safetensors", sd), **SMALL)
    assert "tiny" in str(err.value)


def test_a_config_json_layer_count_is_kept_when_the_last_block_is_missing(tmp_path):
    cfg = WanDiTConfig.tiny(num_layers=3, ffn_dim=48)  # no known size: only config.json says 3
    sd = {k: t for k, t in WanDiT(cfg).state_dict().items() if not k.startswith("blocks.2.")}
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"num_layers": 3, "num_heads": 2, "text_len": 8}))
    with pytest.raises(CheckpointError) as err:
        SkyReelsDFAdapter(checkpoint=str(folder), **SMALL)
    assert "blocks.2." in str(err.value)


def test_magi_shapes_of_a_release_minus_its_last_layer_are_refused():
    with torch.device("meta"):
        sd = MagiDiT(MagiDiTConfig.magi_4_5b()).state_dict()
    last = f"videodit_blocks.layers.{MagiDiTConfig.magi_4_5b().num_layers - 1}."
    shapes = {k: tuple(t.shape) for k, t in sd.items() if not k.startswith(last)}
    with pytest.raises(CheckpointError, match="layers"):
        config_from_shapes(shapes, "magi")


# ---- item 3: shard names stay inside their folder -----------------------------------------------


def outside_names(tmp_path: Path, sd: StateDict) -> dict[str, Path]:
    """Shards outside the checkpoint folder holding one real tensor, by the way they are named."""
    key = "proj_out.bias"
    outside = tmp_path / "outside.safetensors"
    save_file({key: {to_diffusers_key(k): t for k, t in sd.items()}[key]}, str(outside))
    return {"parent": "../outside.safetensors", "absolute": str(outside.resolve())}


@pytest.mark.parametrize("how", ["parent", "absolute"])
def test_diffusers_shard_names_outside_the_folder_are_refused(tmp_path, wan_sd, how):
    name = outside_names(tmp_path, wan_sd)[how]
    folder = save_diffusers_folder(tmp_path / "transformer", wan_sd, {"proj_out.bias": name})
    with pytest.raises(CheckpointError, match="outside") as err:
        SkyReelsDFAdapter(checkpoint=str(folder), **SMALL)
    assert name in str(err.value)


@pytest.mark.parametrize("how", ["parent", "absolute"])
def test_magi_shard_names_outside_the_folder_are_refused(tmp_path, magi_net, how):
    folder = save_magi_checkpoint(magi_net, tmp_path / "m", shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "m" / first  # a copy one folder up, where a shard must not be read from
    outside.write_bytes((folder / first).read_bytes())
    name = "../" + first if how == "parent" else str(outside.resolve())
    index["weight_map"] = {k: (name if v == first else v) for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside") as err:
        load_magi_checkpoint(tmp_path / "m")
    assert name in str(err.value)


def test_a_symlinked_shard_inside_the_folder_still_loads(tmp_path, wan_sd):
    """Hub caches link every shard to a blob elsewhere: the name decides, not the link target."""
    folder = save_diffusers_folder(tmp_path / "transformer", wan_sd)
    shard = folder / "diffusion_pytorch_model-00001-of-00001.safetensors"
    blob = tmp_path / "blob"
    shard.rename(blob)
    os.symlink(blob, shard)
    assert SkyReelsDFAdapter(checkpoint=str(folder), **SMALL).dit.cfg.num_layers == 2


def test_a_shard_in_a_subfolder_of_the_index_loads(tmp_path, wan_sd):
    folder = save_diffusers_folder(tmp_path / "transformer", wan_sd)
    (folder / "shards").mkdir()
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    doc = json.loads(index.read_text())
    name = "diffusion_pytorch_model-00001-of-00001.safetensors"
    (folder / name).rename(folder / "shards" / name)
    doc["weight_map"] = {k: f"shards/{name}" for k in doc["weight_map"]}
    index.write_text(json.dumps(doc))
    assert SkyReelsDFAdapter(checkpoint=str(folder), **SMALL).dit.cfg.num_layers == 2


def test_a_missing_shard_shipped_compressed_is_named_with_the_fix(tmp_path, wan_sd):
    """Every index (diffusers as MAGI) goes through one reader: a shard present only as .zst says so."""
    folder = save_diffusers_folder(tmp_path / "transformer", wan_sd)
    shard = folder / "diffusion_pytorch_model-00001-of-00001.safetensors"
    shard.rename(shard.with_name(shard.name + ".zst"))
    with pytest.raises(CheckpointError, match="missing .*zstd -d") as err:
        SkyReelsDFAdapter(checkpoint=str(folder), **SMALL)
    assert shard.name in str(err.value)


# ---- item 4: malformed metadata -------------------------------------------------------------------


INDEX_DOCS = {  # each wrong in one way only: the shards it names exist
    "bad JSON": lambda key, shard: "{not json",
    "a list": lambda key, shard: json.dumps([[key, shard]]),
    "weight_map a list": lambda key, shard: json.dumps({"weight_map": [shard]}),
    "a shard name not a string": lambda key, shard: json.dumps({"weight_map": {key: 3}}),
    "metadata a string": lambda key, shard: json.dumps({"metadata": "x", "weight_map": {key: shard}}),
    "metadata a list": lambda key, shard: json.dumps({"metadata": [1, 2], "weight_map": {key: shard}}),
}


@pytest.mark.parametrize("what", sorted(INDEX_DOCS))
def test_malformed_diffusers_index_is_a_checkpoint_error(tmp_path, wan_sd, what):
    folder = save_diffusers_folder(tmp_path / "transformer", wan_sd)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(INDEX_DOCS[what]("proj_out.bias", "diffusion_pytorch_model-00001-of-00001.safetensors"))
    with pytest.raises(CheckpointError) as err:
        SkyReelsDFAdapter(checkpoint=str(folder), **SMALL)
    assert index.name in str(err.value)


@pytest.mark.parametrize("what", sorted(INDEX_DOCS))
def test_malformed_magi_index_is_a_checkpoint_error(tmp_path, magi_net, what):
    folder = save_magi_checkpoint(magi_net, tmp_path)  # one file, then an index naming it
    index = folder / "model.safetensors.index.json"
    index.write_text(INDEX_DOCS[what]("x_embedder.weight", "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_magi_checkpoint(tmp_path)
    assert index.name in str(err.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\"a string\""])
def test_malformed_config_json_is_a_checkpoint_error(tmp_path, wan_sd, text):
    folder = save_diffusers_folder(tmp_path / "transformer", wan_sd)
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError) as err:
        SkyReelsDFAdapter(checkpoint=str(folder), **SMALL)
    assert "config.json" in str(err.value)


def test_zero_size_patch_tensor_is_a_checkpoint_error(tmp_path, wan_sd):
    sd = dict(wan_sd)
    sd["patch_embedding.weight"] = torch.zeros(32, 4, 1, 0, 2)
    with pytest.raises(CheckpointError, match="patch_embedding.weight"):
        KreaAdapter(checkpoint=save_krea(tmp_path / "k.safetensors", sd), **SMALL)


def test_zero_size_magi_patch_tensor_is_a_checkpoint_error():
    with torch.device("meta"):
        shapes = {k: tuple(t.shape) for k, t in MagiDiT(MagiDiTConfig.tiny()).state_dict().items()}
    shapes["x_embedder.weight"] = (64, 16, 0, 2, 2)
    with pytest.raises(CheckpointError, match="x_embedder.weight"):
        config_from_shapes(shapes, "magi")


def test_zero_size_vae_tensor_is_a_checkpoint_error(tmp_path):
    from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig, load_wan_vae

    sd = dict(WanVAE(WanVAEConfig.tiny()).state_dict())
    sd["encoder.conv1.weight"] = torch.zeros(0, 3, 3, 3, 3)
    path = tmp_path / "vae.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="encoder.conv1.weight"):
        load_wan_vae(path)


def _data(tmp_path: Path, what: str) -> Path:
    path = tmp_path / "clips.pt"
    if what == "text":
        path.write_text("these are not encoded clips\n")
    elif what == "tensor":
        torch.save(torch.zeros(3), path)
    elif what == "no latents":
        torch.save({"prompts": ["a"], "seeds": [1], "vae_id": 0.0}, path)
    elif what == "integer latents":
        torch.save({"latents": torch.zeros(1, 3, 8, 16, 16, dtype=torch.int64), "prompts": ["a"], "seeds": [1],
                    "vae_id": 0.0}, path)
    elif what == "nan latents":
        torch.save({"latents": torch.full((1, 3, 8, 16, 16), float("nan")), "prompts": ["a"], "seeds": [1],
                    "vae_id": 0.0}, path)
    elif what == "prompts not a list":
        torch.save({"latents": torch.zeros(1, 3, 8, 16, 16), "prompts": "a", "seeds": [1], "vae_id": 0.0}, path)
    return path


def _no_steps():
    from accelframe_adapters.world.training.common import TrainSettings

    return TrainSettings(steps=1, batch=1, lr=1e-3, warmup=1)  # a training is at least a step: one, short


NO_STEPS = _no_steps()
DATA = ["text", "tensor", "no latents", "integer latents", "nan latents", "prompts not a list"]


@pytest.mark.parametrize("what", DATA)
def test_world_train_data_that_is_not_encoded_clips_is_a_checkpoint_error(tmp_path, what):
    from accelframe_adapters.world.training import train_dit

    data = _data(tmp_path, what)
    with pytest.raises(CheckpointError) as err:
        train_dit.train("drafter", tmp_path / "out.safetensors", vae=world.weights_path("vae"),
                        text=world.weights_path("text"), clips_n=1, data=data, quiet=True, settings=NO_STEPS)
    assert "clips.pt" in str(err.value)


@pytest.mark.parametrize("what", ["text", "no latents"])
def test_world_train_magi_data_that_is_not_encoded_clips_is_a_checkpoint_error(tmp_path, what):
    from accelframe_adapters.world.training import train_magi

    data = _data(tmp_path, what)
    with pytest.raises(CheckpointError) as err:
        train_magi.train(tmp_path / "out.safetensors", vae=world.weights_path("vae"),
                         text=world.weights_path("text"), clips_n=1, data=data, quiet=True, settings=NO_STEPS)
    assert "clips.pt" in str(err.value)


# ---- the shared checks, directly --------------------------------------------------------------


def test_the_shared_checks_name_every_bad_key():
    like = {"nan_key": torch.zeros(2), "int_key": torch.zeros(2), "ok_key": torch.zeros(2)}
    sd = {"nan_key": torch.tensor([0.0, float("nan")]), "int_key": torch.zeros(2, dtype=torch.int64),
          "ok_key": torch.ones(2)}
    with pytest.raises(CheckpointError) as err:
        ck.check_weights("f.safetensors", sd, like)
    text = str(err.value)
    assert "nan_key" in text and "int_key" in text and "int64" in text and "ok_key" not in text
    ck.check_weights("f.safetensors", {"ok_key": torch.ones(2)}, {"ok_key": torch.zeros(2)})  # fine


def test_world_train_force_replaces_a_data_file_that_is_not_a_cache(tmp_path):
    from accelframe_adapters.world.training import train_dit
    from accelframe_adapters.world.training import common as training

    data = _data(tmp_path, "text")
    train_dit.train("drafter", tmp_path / "out.safetensors", vae=world.weights_path("vae"),
                    text=world.weights_path("text"), clips_n=1, data=data, quiet=True, settings=NO_STEPS,
                    force=True)
    assert len(training.read_data(data, force=False)["prompts"]) == 1  # now a cache of the one clip


@pytest.mark.parametrize("config", ["{not json", "[1, 2]", json.dumps({"no_such_field": 1})])
def test_malformed_world_metadata_is_a_checkpoint_error(tmp_path, config):
    from safetensors import safe_open
    from safetensors.torch import load_file

    src = world.weights_path("reward")
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    path = tmp_path / "reward.safetensors"
    save_file(load_file(str(src)), str(path), metadata={**meta, "config": config})
    with pytest.raises(CheckpointError) as err:
        world.load_scorer(weights=str(path))
    assert "reward.safetensors" in str(err.value) and "config" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_finite_check_has_no_false_alarm_and_misses_nothing(dtype):
    big = torch.finfo(dtype).max
    like = {"w": torch.zeros(1)}
    ck.check_weights("f", {"w": torch.full((1000,), big, dtype=dtype)}, like)  # sums past the max: finite
    ck.check_weights("f", {"w": torch.tensor([big, -big], dtype=dtype)}, like)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.ones(257, dtype=dtype)
        t[100] = bad
        with pytest.raises(CheckpointError, match="non-finite"):
            ck.check_weights("f", {"w": t}, like)
    both = torch.tensor([float("inf"), -float("inf")], dtype=dtype)  # a NaN sum, not a cancelled one
    with pytest.raises(CheckpointError, match="non-finite"):
        ck.check_weights("f", {"w": both}, like)


def test_world_train_magi_refuses_a_cache_of_another_vae(tmp_path, monkeypatch):
    """The --data help says a cache is read if made by the same VAE: the MAGI trainer too."""
    from accelframe.errors import ConfigError
    from accelframe_adapters.world.training import train_magi

    def never(*a, **kw):
        raise AssertionError("the cache of another VAE would be replaced")

    monkeypatch.setattr(train_magi, "build_dataset", never)
    data = tmp_path / "clips.pt"
    torch.save({"latents": torch.zeros(1, 3, 8, 16, 16), "prompts": ["a red circle moves left on a blue background"],
                "seeds": [1], "vae_id": 0.0}, data)
    with pytest.raises(ConfigError) as err:
        train_magi.train(tmp_path / "out.safetensors", vae=world.weights_path("vae"),
                         text=world.weights_path("text"), clips_n=1, data=data, quiet=True, settings=NO_STEPS)
    assert err.value.field == "data" and "VAE" in str(err.value)
