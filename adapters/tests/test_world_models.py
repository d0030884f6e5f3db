"""The embedded world's shipped models: loading, generating, the reward, bad input and training."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
import torch

from accelframe import cli
from accelframe.errors import CheckpointError, ConfigError
from accelframe.pipeline import Pipeline
from accelframe.plugins import create_hooks
from accelframe_adapters import plugin
from accelframe_adapters.wan.text import UnknownWordsWarning
from accelframe_adapters.world import clips, models
from accelframe_adapters.world.training import common as training

PROMPT = "a red circle moves left on a blue background"


def _pipe(name="self-forcing", **kw):
    hooks = create_hooks(autoload=False, disabled=(), plugins=(plugin,))
    return Pipeline(name, hooks=hooks, adapter_kwargs=kw)


def test_shipped_weights_are_small_safetensors_with_cards():
    total = 0
    for name, file in models.FILES.items():
        path = models.WEIGHTS / file
        total += path.stat().st_size
        meta = models.read_metadata(path)
        assert "config" in meta and "command" in meta["training"], name
        assert path.with_suffix(".log.json").exists()
        assert path.with_name(file.replace(".safetensors", ".md")).exists(), f"no model card for {name}"
    assert total < 20e6


@pytest.mark.parametrize("size", ["world", "world-drafter"])
def test_world_models_generate_a_block_and_measure_it(size):
    pipe = _pipe(size=size)
    assert pipe.adapter.model_config.world
    res = pipe.generate(PROMPT, num_frames=3, seed=0)
    assert res.frames.shape == (1, 9, 3, 64, 64)
    (q,) = pipe.adapter.measure_quality(res.frames, [PROMPT])
    assert 0.0 <= q["quality"] <= 1.0 and q["prompt"] == PROMPT
    assert pipe.adapter.describe_quality(q).startswith(f"world quality {q['quality']:.3f} (presence ")
    (none,) = pipe.adapter.measure_quality(res.frames, ["a red circle"])
    assert none["quality"] is None and pipe.adapter.describe_quality(none) is None


def test_world_target_is_bigger_than_the_drafter():
    t = models.load_dit("target")
    d = models.load_dit("drafter")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(t) > 2 * count(d)
    assert (t.cfg.in_dim, t.cfg.text_dim) == (d.cfg.in_dim, d.cfg.text_dim) == (models.Z_DIM, models.TEXT_DIM)


def test_every_family_runs_the_world_models():
    for name, kw in (("krea-realtime", {}), ("skyreels-v2-df", {"num_inference_steps": 2})):
        pipe = _pipe(name, **kw)
        res = pipe.generate(PROMPT, num_frames=3, seed=0)
        assert res.frames.shape[-2:] == (64, 64)
    assert _pipe("skyreels-v2-df").adapter.config.causal_block_size == 3  # the world's default


def test_world_reward_prefers_the_prompted_sharp_frame():
    hooks = create_hooks(autoload=False, disabled=(), plugins=(plugin,))
    scorer = hooks.registry().get("scorer", "world-reward").factory()
    scenes = clips.sample_scenes(8, 5, split="eval")
    frames = torch.stack([clips.render(s, i, span=(50, 52)) for i, s in enumerate(scenes)])  # [8, 2, 3, H, W]
    prompts = [s.prompt for s in scenes]
    good = scorer(frames, prompts)
    assert good.shape == (8, 2)
    noise = scorer(torch.rand(frames.shape, generator=torch.Generator().manual_seed(0)), prompts)
    assert float((good > noise).float().mean()) == 1.0
    wrong = [clips.Scene(shape=s.shape, colour=s.background, direction=s.direction, background=s.colour).prompt
             for s in scenes]  # colours swapped: the frame shows something else
    assert float((good > scorer(frames, wrong)).float().mean()) >= 0.75
    with pytest.raises(ConfigError, match="frames"):
        scorer(frames[:, :, :, :32, :32], prompts)


def test_bad_input_names_the_field_before_any_model_call():
    with pytest.raises(ConfigError, match="height = 32 .*64"):
        _pipe(height=32)
    pipe = _pipe()
    with pytest.raises(ConfigError, match="num_frames = 30 .*27 latent frames"):
        pipe.request(PROMPT, num_frames=30)
    with pytest.raises(ConfigError, match="prompts"):
        pipe.request([""], num_frames=3)
    with pytest.warns(UnknownWordsWarning, match="'hexagon', 'zooms'"):
        pipe.request("a red hexagon zooms left on a blue background", num_frames=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.request(PROMPT, num_frames=3)  # known words: no warning


def test_a_damaged_weights_file_is_a_checkpoint_error_naming_it(tmp_path, monkeypatch):
    for file in models.FILES.values():
        shutil.copy(models.WEIGHTS / file, tmp_path / file)
    broken = tmp_path / models.FILES["target"]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # truncated
    monkeypatch.setattr(models, "WEIGHTS", tmp_path)
    with pytest.raises(CheckpointError, match=str(broken)):
        _pipe()
    (tmp_path / models.FILES["vae"]).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="world-vae.safetensors"):
        _pipe(size="world-drafter")
    (tmp_path / models.FILES["drafter"]).unlink()
    with pytest.raises(CheckpointError, match="accelframe world train drafter"):
        _pipe(size="world-drafter")


def test_generate_cli_writes_mp4_strip_and_quality(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")  # the default adapter comes from the entry points
    out = tmp_path / "clip.mp4"
    code = cli.main(["generate", "--prompt", PROMPT, "--frames", "9", "--out", str(out), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["adapter"] == "self-forcing" and doc["quality"][0]["prompt"] == PROMPT
    assert out.exists() and out.with_suffix(".png").exists()
    assert cli.main(["generate", "--prompt", PROMPT, "--frames", "9", "--out", str(out)]) == 2  # never overwrites
    assert "does not exist yet" in capsys.readouterr().err
    assert cli.main(["generate", "--prompt", PROMPT, "--latent-frames", "3"]) == 0  # the adapter words its quality
    line = capsys.readouterr().out.splitlines()[-1]
    names = ("presence", "shape", "motion", "smoothness", "sharpness", "background")
    parts = ", ".join(rf"{k} [01]\.\d\d" for k in names)
    pattern = rf"world quality [01]\.\d{{3}} \({parts}\); measured \S+ moving \S+: {PROMPT!r}"
    assert re.fullmatch(pattern, line), line
    assert cli.main(["generate", "--latent-frames", "3", "--set", "height=48"]) == 2
    assert "64" in capsys.readouterr().err


def test_dit_trainer_writes_loadable_weights(tmp_path):
    from accelframe_adapters.world.training import train_dit
    from accelframe_adapters.wan.dit import WanDiT, WanDiTConfig
    from accelframe_adapters import checkpoints as ck

    out = tmp_path / "d.safetensors"
    settings = training.TrainSettings(steps=2, batch=2, lr=1e-3, warmup=1, log_every=1)
    rec = train_dit.train("drafter", out, vae=models.weights_path("vae"), text=models.weights_path("text"),
                          clips_n=2, settings=settings, short_steps=1, quiet=True)  # one short, one full step
    assert rec["settings"]["steps"] == 2 and rec["short_steps"] == 1
    meta = models.read_metadata(out)
    dit = WanDiT(WanDiTConfig(**meta["config"]))
    assert dit.cfg.spatial_grid == models.SPATIAL_GRID
    ck.fit(dit, ck.read_tensors(out), str(out), what="drafter")
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert log["step"] == [1, 2] and len(log["loss"]) == 2
    with pytest.raises(ConfigError, match="does not exist yet"):
        train_dit.train("drafter", out, vae=models.weights_path("vae"), text=models.weights_path("text"),
                        clips_n=2, settings=settings, quiet=True)
    more = train_dit.train("drafter", tmp_path / "more.safetensors", vae=models.weights_path("vae"),
                           text=models.weights_path("text"), clips_n=2, settings=settings, init=out, quiet=True)
    assert more["init"]["file"] == "d.safetensors" and more["init"]["training"]["short_steps"] == 1
    assert "--init d.safetensors" in more["command"]
    from accelframe_adapters.world.training import cards

    (tmp_path / models.FILES["drafter"]).write_bytes((tmp_path / "more.safetensors").read_bytes())
    cards.write_card("drafter", tmp_path, [])
    card = (tmp_path / models.FILES["drafter"].replace(".safetensors", ".md")).read_text()
    assert "continued from `d.safetensors`, itself trained 2 steps (warm-up 1)" in card and rec["command"] in card
    assert f"`{rec['command']}` ran with a warm-up of 1 steps, not the command line's 100" in card
    with pytest.raises(ConfigError, match="init"):  # the target's weights do not fit the drafter
        train_dit.train("drafter", tmp_path / "x.safetensors", vae=models.weights_path("vae"),
                        text=models.weights_path("text"), clips_n=2, settings=settings,
                        init=models.weights_path("target"), quiet=True)
    with pytest.raises(ConfigError, match="short_steps"):
        train_dit.train("drafter", tmp_path / "e.safetensors", vae=models.weights_path("vae"),
                        text=models.weights_path("text"), clips_n=2, settings=settings, short_steps=-1, quiet=True)
    # naming the CPU changes nothing: the same bits as the default run
    same = train_dit.train("drafter", tmp_path / "cpu.safetensors", vae=models.weights_path("vae"),
                           text=models.weights_path("text"), clips_n=2, settings=settings, short_steps=1,
                           quiet=True, device="cpu")
    assert "--device" not in same["command"] and "device" not in same["machine"]
    a, b = ck.read_tensors(out), ck.read_tensors(tmp_path / "cpu.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="device"):
        train_dit.train("drafter", tmp_path / "g.safetensors", vae=models.weights_path("vae"),
                        text=models.weights_path("text"), clips_n=2, settings=settings, device="banana", quiet=True)
    assert not (tmp_path / "g.safetensors").exists()


def test_magi_trainer_runs_its_short_phase_on_the_first_chunk(tmp_path, monkeypatch):
    """``short_steps`` of the MAGI trainer see the first chunk (6 latent frames) alone, the rest
    the 4 chunks the model runs; the record and its command say so; a negative count is refused."""
    from accelframe_adapters.magi.dit import MagiDiT
    from accelframe_adapters.world.training import train_magi

    seen = []
    forward = MagiDiT.forward

    def spy(self, x, *a, **kw):
        seen.append(x.shape[2])  # [B, z, F, h, w]
        return forward(self, x, *a, **kw)

    monkeypatch.setattr(MagiDiT, "forward", spy)
    kw = dict(vae=models.weights_path("vae"), text=models.weights_path("text"), clips_n=2, quiet=True,
              settings=training.TrainSettings(steps=3, batch=2, lr=1e-3, warmup=1, log_every=1))
    rec = train_magi.train(tmp_path / "m.safetensors", short_steps=2, **kw)
    assert seen == [6, 6, 24]
    assert rec["short_steps"] == 2 and rec["short_frames"] == 6 and "--short-steps 2" in rec["command"]
    with pytest.raises(ConfigError, match="short_steps"):
        train_magi.train(tmp_path / "e.safetensors", short_steps=-1, **kw)


def test_object_masks_cover_the_shape_in_each_latent_frame():
    from accelframe_adapters.world import clips
    from accelframe_adapters.world.training import train_dit

    scene = clips.parse_prompt("a large red square moves quickly right on a blue background")
    m = train_dit.object_masks([scene.prompt], [3], 27, (16, 16))[0]  # [F, h, w]
    a = clips.shape_coverage(scene, 3)  # [105, 64, 64]
    assert m.shape == (27, 16, 16) and set(m.unique().tolist()) == {0.0, 1.0}
    for f, frames in ((0, [0]), (5, [17, 18, 19, 20]), (26, [101, 102, 103, 104])):
        under = torch.nn.functional.max_pool2d(a[frames].amax(0)[None, None], 4)[0, 0] > 0  # [16, 16]
        assert bool(m[f][under].all())  # every latent pixel under the shape
        grown = torch.nn.functional.max_pool2d(under.float()[None, None], 3, 1, 1)[0, 0] > 0
        assert torch.equal(m[f] > 0, grown)  # and one latent pixel around it, nothing more
    assert float(m[26].flatten().nonzero().float().mean()) != float(m[0].flatten().nonzero().float().mean())
    with pytest.raises(ConfigError, match="prompt"):
        train_dit.object_masks(["a red circle"], [0], 27, (16, 16))


def test_weight_average_follows_the_ramped_decay():
    from accelframe_adapters.world.training.train_dit import WeightAverage

    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = WeightAverage(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update()  # decay min(0.5, 2 / 11): 0 + (1 - 2/11) * (1 - 0)
    assert ema.shadow["weight"].item() == pytest.approx(9 / 11)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update()  # decay min(0.5, 3 / 12) = 0.25
    assert ema.shadow["weight"].item() == pytest.approx(9 / 11 + 0.75 * (3 - 9 / 11))
    assert ema.state_dict()["weight"].item() == pytest.approx(ema.shadow["weight"].item())
    assert lin.weight.item() == 3.0  # the trained weights stay as they are


def test_noise_levels_follow_the_four_patterns():
    from accelframe_adapters.world.training.train_dit import noise_levels

    lv = noise_levels(400, 27, torch.Generator().manual_seed(0))
    assert lv.shape == (400, 27) and float(lv.min()) >= 0.0 and float(lv.max()) <= 1.0
    blocks = lv.view(400, 9, 3)
    per_block = (blocks == blocks[:, :, :1]).all(dim=(1, 2))
    assert 0.5 < float(per_block.float().mean()) < 0.9  # per block, teacher forcing and synchronous rows
    teacher = (lv[:, 0] == 0)
    assert teacher.any() and not (lv[:, -3:] == 0).all(dim=1).any()  # the last block is never context


def test_vae_trainer_and_the_chunk_local_constraint(tmp_path):
    from accelframe_adapters.world.training import train_dit
    from accelframe_adapters.world.training import train_vae
    from accelframe_adapters.wan.vae import WanVAE

    phase = train_vae.Phase("local", training.TrainSettings(steps=2, batch=2, lr=1e-3, warmup=1, log_every=1),
                            frames=5, crop=32, local=True)
    out = tmp_path / "vae.safetensors"
    rec = train_vae.train(out, phases=(phase,), fit_clips=2, eval_clips=1, quiet=True)
    assert rec["command"].startswith("accelframe world train vae") and "psnr_db" in rec["eval"]
    vae = train_dit.load_vae(out)
    video = torch.rand(1, 3, 13, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    other = video.clone()
    other[:, :, 1:5] = 0.0  # change chunk 1 only
    with torch.no_grad():
        a, b = vae.encode(video), vae.encode(other)
        torch.testing.assert_close(a[:, :, [0, 2, 3]], b[:, :, [0, 2, 3]], rtol=0, atol=1e-6)
        assert float((a[:, :, 1] - b[:, :, 1]).abs().max()) > 1e-3
        torch.testing.assert_close(train_dit.encode_chunks(vae, video), a, rtol=0, atol=1e-5)
    plain = WanVAE(models.vae_config())  # an unconstrained VAE mixes chunks
    with torch.no_grad():
        assert float((plain.encode(video)[:, :, 2] - plain.encode(other)[:, :, 2]).abs().max()) > 1e-3


def test_reward_trainer_writes_a_standardised_scorer(tmp_path):
    from accelframe_adapters.world.training import train_reward

    out = tmp_path / "reward.safetensors"
    settings = training.TrainSettings(steps=2, batch=4, lr=1e-3, warmup=1, log_every=1)
    rec = train_reward.train(out, vae=models.weights_path("vae"), text=models.weights_path("text"),
                             settings=settings, pool=32, eval_pairs=14, quiet=True)
    assert set(rec["eval"]["accuracy_by_kind"]) == set(train_reward.KINDS)
    scorer = models.load_scorer(weights=str(out))
    assert scorer(torch.rand(1, 2, 3, 64, 64), [PROMPT]).shape == (1, 2)


def test_world_doc_examples_run(capsys, monkeypatch):
    import re
    from pathlib import Path

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "world.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "docs/world.md", "exec"), {})
    out = capsys.readouterr().out.split()
    assert out[:2] == ["0.99", "True"] and "torch.Size([1," in out


def test_a_card_names_the_gpu_a_model_trained_on(tmp_path):
    from accelframe_adapters.world.training import cards

    rec = {"settings": {"steps": 3, "batch": 2, "lr": 1e-3, "warmup": 1, "seed": 0}, "wall_s": 120.0,
           "machine": {"threads": 4, "torch": "2.x", "device": "NVIDIA H200"}, "command": "accelframe world train"}
    training.save(tmp_path / models.FILES["drafter"], {"w": torch.zeros(2)}, config={}, training=rec,
                  log={"step": [1, 2, 3], "loss": [1.0, 0.5, 0.25]})
    cards.write_card("drafter", tmp_path, [])
    card = (tmp_path / models.FILES["drafter"].replace(".safetensors", ".md")).read_text()
    assert "trained in 2.0 min on one NVIDIA H200 (4 CPU threads, torch 2.x)" in card
    rec["machine"].pop("device")
    training.save(tmp_path / models.FILES["drafter"], {"w": torch.zeros(2)}, config={}, training=rec,
                  log={"step": [1, 2, 3], "loss": [1.0, 0.5, 0.25]})
    cards.write_card("drafter", tmp_path, [])
    card = (tmp_path / models.FILES["drafter"].replace(".safetensors", ".md")).read_text()
    assert "trained in 2.0 min on 4 CPU threads (torch 2.x)" in card
