"""The ImageReward plugin (plugins/imagereward) without the image-reward package: registration, the
typed errors raised before anything is imported, the error when ImageReward cannot be imported, the
tensor preprocessing, and the scorer's checks and batching around a stand-in network.

The package itself needs an environment of its own; .ci/imagereward runs the tests with the real
network (plugins/imagereward/tests)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

PLUGIN = Path(__file__).resolve().parents[1]
if str(PLUGIN) not in sys.path:  # not installed in the main environment: import it from the checkout
    sys.path.append(str(PLUGIN))

import accelframe_imagereward as air  # noqa: E402
from accelframe.errors import AccelframeError, ConfigError  # noqa: E402
from accelframe.plugins import create_hooks  # noqa: E402
from accelframe_imagereward import compat, preprocessing, scorer  # noqa: E402

PROMPTS = ["a red ball", "a blue cube"]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    # (torch.testing.assert_close would import torch.distributed, a second of this file's budget)
    assert a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol), (a - b).abs().max()


@pytest.fixture
def files(tmp_path):
    """Paths that pass the argument checks (their contents are never read by these tests)."""
    ckpt = tmp_path / "ImageReward.pt"
    ckpt.write_bytes(b"")
    med = tmp_path / "med_config.json"
    med.write_text(json.dumps({"hidden_size": 768, "add_cross_attention": True}))
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    return {"checkpoint": str(ckpt), "med_config": str(med), "tokenizer": str(vocab)}


@pytest.fixture
def no_import(monkeypatch):
    """Fail the test if the factory tries to import ImageReward; keep the offline variables local."""
    for name in compat.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)

    def forbidden():
        raise AssertionError("ImageReward was imported before the arguments were checked")

    monkeypatch.setattr(scorer, "import_imagereward", forbidden)


def test_registered_as_imagereward_through_the_hooks():
    hooks = create_hooks(autoload=False, disabled=(), plugins=(air,))
    entry = hooks.registry().get("scorer", "imagereward")
    assert entry.factory is scorer.load_scorer and entry.plugin == "accelframe_imagereward"
    assert "ImageReward" in entry.description
    assert "ImageReward" not in sys.modules  # registering imports nothing of the package


def test_distribution_declares_the_entry_point_and_pins():
    meta = tomllib.loads((PLUGIN / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "accelframe-imagereward"
    assert meta["project"]["entry-points"]["accelframe"] == {"imagereward": "accelframe_imagereward"}
    deps = meta["project"]["dependencies"]
    for pin in ("accelframe", "image-reward==1.5", "timm==0.6.13", "fairscale==0.4.13"):
        assert pin in deps
    assert any(d.startswith("transformers") and "<4.56" in d for d in deps)
    constraints = (PLUGIN / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints and "torchvision==0.28.0" in constraints


@pytest.mark.parametrize("field", ["checkpoint", "med_config", "tokenizer"])
@pytest.mark.parametrize("bad", [None, "missing"])
def test_a_missing_path_is_a_config_error_before_any_import(files, no_import, tmp_path, field, bad):
    kwargs = dict(files, **{field: None if bad is None else str(tmp_path / "nowhere" / field)})
    with pytest.raises(ConfigError) as err:
        scorer.load_scorer(**kwargs)
    assert err.value.owner == "imagereward" and err.value.field == field
    assert err.value.value == kwargs[field]
    assert "nothing is downloaded" in str(err.value) and "local" in str(err.value)


def test_other_bad_arguments_are_config_errors_before_any_import(files, no_import, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = {"tokenizer": str(tmp_path / "empty"), "batch_size": 0, "device": "no-such-device"}
    for field, value in cases.items():
        with pytest.raises(ConfigError) as err:
            scorer.load_scorer(**dict(files, **{field: value}))
        assert err.value.field == field, field
    Path(files["med_config"]).write_text(json.dumps({"hidden_size": 512}))
    with pytest.raises(ConfigError, match="hidden_size 768"):
        scorer.load_scorer(**files)
    Path(files["med_config"]).write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        scorer.load_scorer(**files)


def test_without_imagereward_the_error_points_at_the_plugins_environment(files, monkeypatch):
    for name in compat.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # not importable, whatever is installed
    with pytest.raises(compat.ImageRewardUnavailable) as err:
        scorer.load_scorer(**files)
    assert isinstance(err.value, AccelframeError) and isinstance(err.value, ImportError)
    assert "plugins/imagereward/README.md" in str(err.value) and "environment of its own" in str(err.value)


def test_resized_size_follows_torchvision():
    assert preprocessing.resized_size(64, 64) == (224, 224)
    assert preprocessing.resized_size(48, 80) == (224, 373)
    assert preprocessing.resized_size(300, 260) == (258, 224)
    assert preprocessing.resized_size(480, 832) == (224, 388)


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (300, 260), (224, 224)])
def test_preprocess_shape_and_normalisation(hw):
    grey = torch.full((1, 3, *hw), 0.25)
    out = air.preprocess(grey)
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    mean, std = torch.tensor(air.CLIP_MEAN), torch.tensor(air.CLIP_STD)
    _close(out[:, :, 100, 50], ((0.25 - mean) / std).view(1, 3), atol=1e-5)
    frame = torch.rand(1, 3, *hw)
    out = air.preprocess(frame)
    assert torch.isfinite(out).all()
    lo, hi = (out * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).aminmax()
    assert lo >= -1e-5 and hi <= 1.0 + 1e-5  # clamped like PIL's 8-bit output
    if hw == (224, 224):  # the right size already: only normalised
        _close(out, (frame - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), atol=1e-6)


class _Tokens:
    """A stand-in for BLIP's tokenizer: one id per word, padded to 35."""

    def __call__(self, prompts, padding, truncation, max_length, return_tensors):
        assert (padding, truncation, max_length, return_tensors) == ("max_length", True, 35, "pt")
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = [len(w) for w in p.split()][:max_length]
            ids[i, :len(words)] = torch.tensor(words)
        return SimpleNamespace(input_ids=ids, attention_mask=(ids > 0).long())


class _Text(nn.Module):
    def forward(self, ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict):
        assert encoder_attention_mask.shape == encoder_hidden_states.shape[:-1]
        first = ids.float().sum(1, keepdim=True) + encoder_hidden_states[:, 0, :].sum(1, keepdim=True)
        return SimpleNamespace(last_hidden_state=first.view(-1, 1, 1).expand(-1, 2, 768))


class _StandIn(nn.Module):
    """ImageReward's attributes the scorer uses, with arithmetic a test can follow: the reward of a
    frame is (prompt's word lengths + 3 x its preprocessed mean) x 768, standardised."""

    def __init__(self) -> None:
        super().__init__()
        self.blip = nn.Module()
        self.blip.visual_encoder = _Mean()
        self.blip.text_encoder = _Text()
        self.blip.tokenizer = _Tokens()
        self.mlp = _Sum()
        self.mean, self.std = 1.0, 2.0


class _Mean(nn.Module):
    def forward(self, pixels):
        assert pixels.shape[1:] == (3, 224, 224)
        return pixels.mean(dim=(1, 2, 3)).view(-1, 1, 1).expand(-1, 5, 3)


class _Sum(nn.Module):
    def forward(self, features):
        return features.sum(-1, keepdim=True)


def test_scorer_pairs_every_frame_with_its_clips_prompt_in_any_batch_size():
    frames = torch.rand(2, 3, 3, 224, 224)  # the network's size: preprocessing only normalises (fast)
    want = []
    for clip, prompt in enumerate(PROMPTS):
        words = sum(len(w) for w in prompt.split())
        pix = air.preprocess(frames[clip]).mean(dim=(1, 2, 3))
        want.append(((words + 3 * pix) * 768 - 1.0) / 2.0)
    want = torch.stack(want)
    for batch in (1, 4, 16):
        got = air.ImageRewardScorer(_StandIn(), batch_size=batch)(frames, PROMPTS)
        assert got.shape == (2, 3) and got.dtype == torch.float32
        _close(got, want, atol=1e-4, rtol=1e-5)  # rewards are ~1e4 here
    empty = air.ImageRewardScorer(_StandIn())(torch.rand(2, 0, 3, 8, 8), PROMPTS)
    assert empty.shape == (2, 0)


def test_scorer_rejects_bad_frames_and_prompts():
    score = air.ImageRewardScorer(_StandIn())
    good = torch.rand(2, 3, 3, 16, 16)
    cases = [
        (good.numpy(), PROMPTS, "frames"),
        (good[:, :, :2], PROMPTS, "frames"),
        (good[0], PROMPTS, "frames"),
        ((good * 255).byte(), PROMPTS, "frames"),
        (good * 2.0, PROMPTS, "frames"),
        (good - 0.5, PROMPTS, "frames"),
        (torch.full_like(good, float("nan")), PROMPTS, "frames"),
        (good, PROMPTS[:1], "prompts"),
        (good, "a red ball", "prompts"),
        (good, ["a red ball", 3], "prompts"),
    ]
    for frames, prompts, field in cases:
        with pytest.raises(ConfigError) as err:
            score(frames, prompts)
        assert err.value.owner == "imagereward" and err.value.field == field
    with pytest.raises(ConfigError):
        air.ImageRewardScorer(_StandIn(), batch_size=0)
