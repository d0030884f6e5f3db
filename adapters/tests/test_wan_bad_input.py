"""Bad knobs and requests for the Wan families fail with a ConfigError naming the field, the value
and what is allowed, before any model call (every network entry point here raises if reached)."""

from __future__ import annotations

import pytest
import torch

from accelframe.errors import ConfigError, UnknownNameError
from accelframe.pipeline import Pipeline
from accelframe.testing.fixtures import make_hooks
from accelframe.types import Request
from accelframe_adapters import plugin as adapters_plugin
from accelframe_adapters.wan.krea import KreaAdapter
from accelframe_adapters.wan.self_forcing import SelfForcingAdapter
from accelframe_adapters.wan.skyreels_df import SkyReelsDFAdapter
from accelframe_adapters.wan.text import WordEncoder
from accelframe_adapters.wan.dit import WanDiT
from accelframe_adapters.wan.vae import WanVAE

FAMILIES = ("self-forcing", "krea-realtime", "skyreels-v2-df")
SMALL = {"size": "tiny", "height": 32, "width": 32}


class ModelCalled(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_model_calls(monkeypatch) -> list[str]:
    """Every network entry point (DiT, VAE, text encoder) records its call and raises."""
    calls: list[str] = []

    def guard(name: str):
        def called(*args, **kwargs):
            calls.append(name)
            raise ModelCalled(f"{name} was called")
        return called

    for cls, names in ((WanDiT, ("forward", "probe", "cross_cache")),
                       (WanVAE, ("encode", "encode_chunk", "decode", "decode_chunk")),
                       (WordEncoder, ("forward",))):
        for name in names:
            monkeypatch.setattr(cls, name, guard(f"{cls.__name__}.{name}"))
    return calls


@pytest.fixture(scope="module")
def hooks():
    return make_hooks(adapters_plugin)


def pipe(hooks, name: str, **knobs) -> Pipeline:
    return Pipeline(name, hooks=hooks, adapter_kwargs={**SMALL, **knobs})


def check(err: pytest.ExceptionInfo, owner: str, field: str, value, *allowed: str) -> None:
    e, msg = err.value, str(err.value)
    assert (e.owner, e.field, e.value) == (owner, field, value), msg
    assert f"{owner}.{field} = {value!r}" in msg, msg
    for words in allowed:
        assert words in e.allowed and words in msg, (words, msg)


def test_the_guard_catches_a_model_call(hooks, no_model_calls):
    """A good request reaches the network, and the guard says so: the tests below prove something."""
    p = pipe(hooks, "self-forcing")
    with pytest.raises(ModelCalled):
        p.generate(["a cat"], num_frames=3)
    assert no_model_calls


# ---- requests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["self-forcing", "krea-realtime"])
def test_frame_count_the_blocks_do_not_divide(hooks, no_model_calls, name):
    p = pipe(hooks, name)
    with pytest.raises(ConfigError) as err:
        p.generate(["a cat"], num_frames=4)
    check(err, "Request", "num_frames", 4, "num_frame_per_block = 3", "3, 6, 9, 12", "9, 21, 33, 45")
    assert no_model_calls == []


def test_first_frame_off_a_block_boundary(hooks, no_model_calls):
    with pytest.raises(ConfigError) as err:
        pipe(hooks, "self-forcing").generate(["a cat"], num_frames=3, first_frame=2)
    check(err, "Request", "first_frame", 2, "a multiple of 3")
    assert no_model_calls == []


@pytest.mark.parametrize("cls", [SelfForcingAdapter, KreaAdapter, SkyReelsDFAdapter])
def test_pixel_frame_count_the_vae_cannot_produce(cls):
    adapter = cls(**SMALL)
    for bad in (10, 0, 2):
        with pytest.raises(ConfigError) as err:
            adapter.latent_frames(bad)
        check(err, cls.__name__, "pixel_frames", bad, "1 + 4k")
    with pytest.raises(ConfigError) as err:
        SelfForcingAdapter(**SMALL).latent_frames(10)
    assert "9, 21, 33" in str(err.value)  # whole blocks of 3 latent frames
    assert [adapter.latent_frames(n) for n in (1, 5, 9, 21)] == [1, 2, 3, 6]


def test_skyreels_frames_not_a_multiple_of_the_causal_block(hooks, no_model_calls):
    p = pipe(hooks, "skyreels-v2-df", causal_block_size=5, base_num_frames=97)
    with pytest.raises(ConfigError) as err:
        p.generate(["a cat"], num_frames=7)
    check(err, "Request", "num_frames", 7, "causal_block_size = 5", "5, 10, 15, 20")
    assert no_model_calls == []


def test_skyreels_long_video_without_overlap(hooks, no_model_calls):
    p = pipe(hooks, "skyreels-v2-df", base_num_frames=17)  # 5 latent frames per window
    with pytest.raises(ConfigError) as err:
        p.generate(["a cat"], num_frames=6)
    check(err, "SkyReelsDFConfig", "overlap_history", None, "base_num_frames = 17", "e.g. 17")
    assert no_model_calls == []


@pytest.mark.parametrize("field, value, words", [("first_frame", 3, "0: diffusion forcing"),
                                                 ("start_sigma", 0.5, "1.0")])
def test_skyreels_starts_a_whole_video_from_noise(hooks, no_model_calls, field, value, words):
    with pytest.raises(ConfigError) as err:
        pipe(hooks, "skyreels-v2-df").generate(["a cat"], num_frames=3, **{field: value})
    check(err, "Request", field, value, words)
    assert no_model_calls == []


@pytest.mark.parametrize("name", FAMILIES)
def test_prompts_that_do_not_match_the_init_latents_batch(hooks, no_model_calls, name):
    p = pipe(hooks, name)
    latents = torch.zeros(1, 3, 4, 4, 4)  # [B = 1, F, C, H, W]
    with pytest.raises(ConfigError) as err:
        p.generate(["a cat", "a dog"], num_frames=3, init_latents=latents, start_sigma=1.0)
    check(err, "Request", "init_latents", (1, 3, 4, 4, 4), "(2, 3, 4, 4, 4)")
    with pytest.raises(ConfigError) as err:  # the frame count and latent grid are checked too
        p.adapter.validate(Request(prompts=("a cat",), num_frames=3, init_latents=torch.zeros(1, 3, 4, 8, 8)))
    check(err, "Request", "init_latents", (1, 3, 4, 8, 8), "(1, 3, 4, 4, 4)")
    assert no_model_calls == []


# ---- knobs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, knobs, owner, field, value, allowed",
    [
        # SkyReels: windows and overlaps in pixel frames, blocks in latent frames
        ("skyreels-v2-df", {"causal_block_size": 4}, "SkyReelsDFConfig", "causal_block_size", 4,
         ["a divisor of the 25 latent frames", "base_num_frames = 97"]),
        ("skyreels-v2-df", {"base_num_frames": 20}, "SkyReelsDFConfig", "base_num_frames", 20, ["1 + 4k"]),
        ("skyreels-v2-df", {"overlap_history": 18}, "SkyReelsDFConfig", "overlap_history", 18,
         ["1 + 4k", "e.g. 17"]),
        ("skyreels-v2-df", {"causal_block_size": 5, "overlap_history": 13}, "SkyReelsDFConfig",
         "overlap_history", 13, ["causal_block_size = 5", "17, 37"]),
        ("skyreels-v2-df", {"base_num_frames": 17, "overlap_history": 17}, "SkyReelsDFConfig",
         "overlap_history", 17, ["fewer pixel frames than base_num_frames = 17"]),
        ("skyreels-v2-df", {"num_inference_steps": -1}, "SkyReelsDFConfig", "num_inference_steps", -1,
         ["an integer in [1, 1000]"]),
        ("skyreels-v2-df", {"num_inference_steps": 2.5}, "SkyReelsDFConfig", "num_inference_steps", 2.5,
         ["an integer"]),
        ("skyreels-v2-df", {"guidance_scale": -2.0}, "SkyReelsDFConfig", "guidance_scale", -2.0, ["[0.0, 100.0]"]),
        # Krea and Self-Forcing: steps and windows
        ("krea-realtime", {"num_denoising_steps": -3}, "KreaConfig", "num_denoising_steps", -3,
         ["an integer in [2, 1000]"]),
        ("krea-realtime", {"kv_cache_num_frames": 0}, "KreaConfig", "kv_cache_num_frames", 0, ["[1, 1000]"]),
        ("self-forcing", {"denoising_step_list": (1000, 500, -250)}, "SelfForcingConfig",
         "denoising_step_list", (1000, 500, -250), ["strictly decreasing", "[0, 1000]"]),
        ("self-forcing", {"denoising_step_list": (250, 500)}, "SelfForcingConfig", "denoising_step_list",
         (250, 500), ["strictly decreasing"]),
        ("self-forcing", {"denoising_step_list": ()}, "SelfForcingConfig", "denoising_step_list", (),
         ["non-empty"]),
        ("self-forcing", {"local_attn_size": 3}, "SelfForcingConfig", "local_attn_size", 3,
         ["-1, or more than num_frame_per_block + sink_size = 3"]),
        ("self-forcing", {"local_attn_size": 5, "sink_size": 2}, "SelfForcingConfig", "local_attn_size", 5,
         ["num_frame_per_block + sink_size = 5"]),
        ("self-forcing", {"local_attn_size": 0}, "SelfForcingConfig", "local_attn_size", 0, ["-1 (global)"]),
        ("self-forcing", {"num_frame_per_block": 0}, "SelfForcingConfig", "num_frame_per_block", 0, ["[1, 64]"]),
        # the model knobs every family shares
        ("self-forcing", {"height": 40}, "WanModelConfig", "height", 40, ["a multiple of 16"]),
        ("krea-realtime", {"width": 8}, "WanModelConfig", "width", 8, ["[16, 4096]"]),
        ("skyreels-v2-df", {"size": "7B"}, "WanModelConfig", "size", "7B", ["'tiny', '1.3B', '14B'"]),
        ("self-forcing", {"dtype": "float64"}, "WanModelConfig", "dtype", "float64", ["'float32', 'bfloat16'"]),
        ("krea-realtime", {"init_seed": -1}, "WanModelConfig", "init_seed", -1, ["[0, "]),
    ],
)
def test_bad_knobs_fail_when_the_pipeline_is_built(hooks, no_model_calls, name, knobs, owner, field, value,
                                                   allowed):
    with pytest.raises(ConfigError) as err:
        pipe(hooks, name, **knobs)
    check(err, owner, field, value, *allowed)
    assert no_model_calls == []


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_knob_is_named(hooks, no_model_calls, name):
    with pytest.raises(ConfigError) as err:
        pipe(hooks, name, num_stepz=4)
    assert (err.value.field, err.value.value) == ("num_stepz", 4)
    assert name in str(err.value) and "num_stepz" in str(err.value)
    assert no_model_calls == []


def test_unknown_family_lists_the_registered_ones(hooks):
    with pytest.raises(UnknownNameError) as err:
        Pipeline("self-forcin", hooks=hooks)
    assert set(FAMILIES) <= set(err.value.known)
    assert all(n in str(err.value) for n in FAMILIES)


def test_direct_construction_raises_the_same_errors(no_model_calls):
    with pytest.raises(ConfigError) as err:
        SelfForcingAdapter(local_attn_size=2)
    check(err, "SelfForcingConfig", "local_attn_size", 2, "num_frame_per_block + sink_size = 3")
    with pytest.raises(ConfigError) as err:
        SkyReelsDFAdapter(height=24)
    check(err, "WanModelConfig", "height", 24, "a multiple of 16")
    adapter = KreaAdapter(**SMALL)
    with pytest.raises(ConfigError) as err:
        adapter.validate(Request(prompts=("a cat",), num_frames=5))
    check(err, "Request", "num_frames", 5, "3, 6, 9, 12")
    assert no_model_calls == []
