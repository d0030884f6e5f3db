"""The imagereward scorer with the real image-reward package (the optional job: .ci/imagereward).

The network is ImageReward's own (BLIP ViT-L + text encoder + MLP head) with random weights: a
med_config with 2 text layers instead of 12, a small vocabulary written here, a state dict saved with
torch.save and loaded back through the plugin's factory, which goes through ``ImageReward.load``.
Building ViT-L takes seconds and about 1.3 GB per copy, so the network is built once per module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings

import pytest
import torch
from torch import nn

if importlib.util.find_spec("ImageReward") is None:
    pytest.skip("the image-reward package is not installed (see plugins/imagereward/README.md)",
                allow_module_level=True)

from PIL import Image  # noqa: E402

from accelframe.errors import CheckpointError, ConfigError  # noqa: E402
from accelframe.plugins import create_hooks  # noqa: E402
import accelframe_imagereward as air  # noqa: E402
from accelframe_imagereward.compat import import_imagereward  # noqa: E402
from accelframe_imagereward.scorer import ImageRewardScorer, local_tokenizer  # noqa: E402

PROMPTS = ["a red ball rolls on green grass", "a blue cube under a bright sky"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _med_config(vocab_size: int) -> dict:
    """ImageReward's med_config.json (BLIP's BERT config) with 2 layers instead of 12."""
    return {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 1024, "num_hidden_layers": 2,
        "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1, "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "pad_token_id": 0, "type_vocab_size": 2,
        "vocab_size": vocab_size, "encoder_width": 1024, "add_cross_attention": True,
    }


def _to_pil(frame: torch.Tensor) -> Image.Image:
    """An 8-bit RGB image of ``frame [3, H, W]`` (values already on the 8-bit grid)."""
    return Image.fromarray((frame.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def _frames(t: int, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """``[1, t, 3, h, w]`` in [0, 1] on the 8-bit grid: a moving disc over a gradient, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for i in range(t):
        disc = ((x - 0.2 - 0.6 * i / max(t - 1, 1)) ** 2 + (y - 0.5) ** 2 < 0.04).float()
        rgb = torch.stack([0.3 * x + 0.7 * disc, 0.6 * y * (1 - disc), 0.5 * (1 - x)])
        out.append((rgb + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1))
    return ((torch.stack(out) * 255).round() / 255).unsqueeze(0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The real network with random weights, written as ImageReward's three files."""
    ir = import_imagereward()
    root = tmp_path_factory.mktemp("imagereward")
    words = sorted({w for p in PROMPTS for w in p.split()})
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.txt").write_text("\n".join(SPECIAL + words) + "\n")
    med = root / "med_config.json"
    med.write_text(json.dumps(_med_config(len(SPECIAL) + len(words) + 2)))  # + BLIP's [DEC] and [ENC]
    torch.manual_seed(0)
    with local_tokenizer(str(root / "vocab")):
        model = ir.ImageReward(med_config=str(med), device="cpu").eval()
    for layer in model.mlp.layers:  # the package's head starts near 0; spread the scores
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=layer.in_features ** -0.5)
            nn.init.normal_(layer.bias, std=0.1)
    ckpt = root / "ImageReward.pt"
    torch.save(model.state_dict(), ckpt)
    return {"model": model, "checkpoint": str(ckpt), "med_config": str(med), "tokenizer": str(root / "vocab")}


@pytest.fixture(scope="module")
def scorer(files):
    """The scorer built by name through the hooks, from the files."""
    hooks = create_hooks(autoload=False, disabled=(), plugins=(air,))
    kwargs = {k: files[k] for k in ("checkpoint", "med_config", "tokenizer")}
    return hooks.registry().get("scorer", "imagereward").factory(**kwargs, batch_size=4)


def test_import_keeps_the_processs_warning_filters_and_goes_offline():
    import_imagereward()
    assert ("ignore", None, Warning, None, 0) not in warnings.filters  # blip.py's blanket "ignore" is undone
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_reloaded_weights_equal_the_saved_ones_and_the_tokenizer_is_local(files, scorer):
    saved, loaded = files["model"].state_dict(), scorer.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    ids = scorer.tokenizer(PROMPTS[0]).input_ids
    assert scorer.tokenizer.unk_token_id not in ids and len(ids) == len(PROMPTS[0].split()) + 2
    assert scorer.tokenizer.enc_token_id == len(scorer.tokenizer) - 1  # BLIP's [ENC] was added


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (300, 260)])
def test_preprocessing_matches_the_packages_pil_pipeline(files, hw):
    frame = _frames(1, *hw)[0, 0]
    ours = air.preprocess(frame.unsqueeze(0))[0]
    theirs = files["model"].preprocess(_to_pil(frame))
    assert ours.shape == theirs.shape == (3, 224, 224)
    grey = (ours - theirs).abs() * torch.tensor(air.CLIP_STD).view(3, 1, 1) * 255  # in 8-bit grey levels
    assert grey.max() <= 1.5 and grey.mean() <= 0.5, (grey.max(), grey.mean())  # PIL rounds, we do not


def test_scores_decoded_frames_as_the_package_scores_each_image(files, scorer):
    frames = _frames(5)
    got = scorer(frames, PROMPTS[:1])
    assert got.shape == (1, 5) and got.dtype == torch.float32 and torch.isfinite(got).all()
    ref = torch.tensor([files["model"].score(PROMPTS[0], _to_pil(f)) for f in frames[0]])
    assert (got[0] - ref).abs().max() <= 0.02 * max(float(ref.std()), 1e-3) + 1e-3, (got, ref)
    assert float(ref.std()) > 1e-2  # the frames score differently: the comparison means something
    # any batch size gives the same rewards; a batch of two clips pairs each with its prompt
    one = ImageRewardScorer(scorer.model, batch_size=1)(frames[:, :3], PROMPTS[:1])
    assert torch.allclose(one, got[:, :3], atol=1e-4)
    two = ImageRewardScorer(scorer.model, batch_size=4)(frames[0, :4].view(2, 2, 3, 64, 64), PROMPTS)
    assert torch.allclose(two[0], got[0, :2], atol=1e-4)
    assert not torch.allclose(two[1], got[0, 2:4], atol=1e-4)  # another prompt, another reward


def test_missing_files_are_typed_errors(files, tmp_path):
    kwargs = {k: files[k] for k in ("checkpoint", "med_config", "tokenizer")}
    for field in kwargs:
        with pytest.raises(ConfigError) as err:
            air.load_scorer(**dict(kwargs, **{field: str(tmp_path / "absent")}))
        assert err.value.field == field and "nothing is downloaded" in str(err.value)
    partial = tmp_path / "partial.pt"
    torch.save({"mlp.layers.0.weight": torch.zeros(1024, 768)}, partial)
    with pytest.raises(CheckpointError, match="lacks weights") as err:
        air.load_scorer(**dict(kwargs, checkpoint=str(partial)))
    assert "blip.visual_encoder.cls_token" in err.value.missing


def test_scores_frames_decoded_by_the_tiny_world(scorer):
    pytest.importorskip("accelframe_adapters", reason="the world needs accelframe-adapters")
    from accelframe.pipeline import Pipeline
    from accelframe_adapters import plugin

    prompt = "a red circle moves left on a blue background"
    hooks = create_hooks(autoload=False, disabled=(), plugins=(plugin, air))
    res = Pipeline("self-forcing", hooks=hooks, adapter_kwargs={"size": "world"}).generate(
        prompt, num_frames=3, seed=0)
    assert res.frames.shape[:3] == (1, 9, 3)
    got = scorer(res.frames, [prompt])
    assert got.shape == (1, 9) and torch.isfinite(got).all()


def test_routes_sdvg_blocks_by_name(files):
    """SDVG asks for the scorer by name: the world drafter's block 1 is scored by ImageReward."""
    pytest.importorskip("accelframe_adapters", reason="the world needs accelframe-adapters")
    pytest.importorskip("accelframe_policies", reason="SDVG is in accelframe-policies")
    from accelframe.pipeline import Pipeline
    from accelframe_adapters import plugin as adapters
    from accelframe_policies import plugin as policies

    hooks = create_hooks(autoload=False, disabled=(), plugins=(adapters, policies, air))
    pipe = Pipeline("self-forcing", adapter_kwargs={"size": "world"}, drafter="self-forcing",
                    drafter_kwargs={"size": "world-drafter"}, hooks=hooks)
    pipe.use("sdvg", tau=-float("inf"), scorer="imagereward",
             scorer_kwargs={k: files[k] for k in ("checkpoint", "med_config", "tokenizer")})
    res = pipe.generate("a red circle moves left on a blue background", num_frames=6, seed=0)
    blocks = res.trace.of("block")
    assert res.sources == ("target", "draft")
    assert blocks[1]["by"] == "sdvg" and len(blocks[1]["frame_scores"]) == 12  # the block's pixel frames
    assert all(x is not None for x in blocks[1]["frame_scores"])
    assert blocks[1]["score"] == min(blocks[1]["frame_scores"])
