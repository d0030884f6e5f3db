"""``accelframe world probe``: the colour-binding probe of a world DiT's x0 estimates."""

from __future__ import annotations

import json

import pytest
import torch

from accelframe import cli
from accelframe.errors import ConfigError
from accelframe_adapters.world import clips, models, quality
from accelframe_adapters.world.training import probe


class Oracle:
    """A 'DiT' that knows the clean latents: its flow makes ``x_s - s v`` exactly ``x0``."""

    def __init__(self, x0: torch.Tensor) -> None:
        self.x0 = x0

    def __call__(self, x, t, ctx, causal_block=None):
        s = (t[:, 0] / 1000.0).view(-1, 1, 1, 1, 1)
        return (x - self.x0) / s


@pytest.fixture(scope="module")
def vae():
    return models.load_vae(models.weights_path("vae"))


def _text(prompts):
    return torch.zeros(len(prompts), models.TEXT_LEN, models.TEXT_DIM)


def test_a_model_that_knows_x0_reads_every_colour_right(vae):
    scenes, seeds = probe.probe_scenes(4, 11)
    oracle = Oracle(probe.first_block(vae, scenes, seeds))
    doc = probe.binding(oracle, vae, _text, prompts=4, seed=11, levels=(1.0, 0.5))
    for lv in doc["levels"]:
        assert lv["colour_right"] == 1.0 and lv["background_right"] == 1.0, lv
        assert lv["colour_distance"] < 0.25  # what the VAE round trip costs, nothing more


def test_a_model_that_draws_only_the_background_reads_no_shape_colour(vae):
    scenes, seeds = probe.probe_scenes(4, 11)
    x0 = probe.first_block(vae, scenes, seeds)
    # the clean latents of each scene's background alone: a flat clip of the background colour
    flat = torch.stack([torch.tensor(clips.COLOURS[s.background]).view(3, 1, 1, 1).expand(3, 9, 64, 64)
                        for s in scenes])  # [B, 3, 9, H, W]
    from accelframe_adapters.world.training.train_dit import encode_chunks

    with torch.no_grad():
        empty = encode_chunks(vae, flat * 2.0 - 1.0)
    assert empty.shape == x0.shape
    doc = probe.binding(Oracle(empty), vae, _text, prompts=4, seed=11, levels=(1.0,))
    assert doc["levels"][0]["colour_right"] == 0.0 and doc["levels"][0]["background_right"] == 1.0


def test_nearest_colour_and_shape_mask():
    assert quality.nearest_colour(torch.tensor(clips.COLOURS["orange"])) == "orange"
    scene = clips.Scene(shape="circle", colour="red", direction="left", background="blue", size="large")
    m = probe.shape_mask(scene, 0)
    assert m.shape == (clips.HEIGHT, clips.WIDTH) and 400 < int(m.sum()) < 540  # pi * 12.5^2 = 491


@pytest.mark.parametrize("kw, field", [({"prompts": 0}, "prompts"), ({"levels": (0.0,)}, "levels"),
                                       ({"levels": (1.5,)}, "levels")])
def test_bad_probe_settings_name_the_field(vae, kw, field):
    with pytest.raises(ConfigError, match=field):
        probe.binding(Oracle(torch.zeros(1)), vae, _text, **kw)


def test_probe_cli_json(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")  # 'world' is the adapters' command (entry points)
    assert cli.main(["world", "probe", "--prompts", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "target" and [lv["sigma"] for lv in doc["levels"]] == list(probe.LEVELS)
    for lv in doc["levels"]:
        assert 0.0 <= lv["colour_right"] <= 1.0 and 0.0 <= lv["background_right"] <= 1.0
