"""Fidelity against the reference code: numbers the reference computes, recomputed here by hand.

- SkyReels-V2's flow UniPC scheduler (``FlowUniPCMultistepScheduler``): the integer timesteps the
  model receives.
- StreamDiffusionV2's motion-aware noise controller (``streamv2v/inference.py``): the level of each
  chunk of a stream.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accelframe.types import NoiseContext
from accelframe_policies.motion_noise import MotionNoise

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------------
# skyreels-v2-df: integer timesteps
# ------------------------------------------------------------------------------------------------


def reference_timesteps(num_steps: int, shift: float) -> list[int]:
    """The reference scheduler's arithmetic, step by step. Its constructor (shift 1, as every
    SkyReels-V2 pipeline builds it) makes the 1000-point training sigmas in float64 numpy, stores
    them as float32, and keeps the first and last as Python floats (σ_max = float32(0.999),
    σ_min = 0). ``set_timesteps`` then works in float64 numpy: linspace(σ_max, σ_min, N + 1)[:-1],
    the shift, × 1000, and a cast to int64 (truncation)."""
    train = (1.0 - np.linspace(1, 1 / 1000, 1000)[::-1]).astype(np.float32)
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    s = np.linspace(sigma_max, sigma_min, num_steps + 1)[:-1]
    s = shift * s / (1 + (shift - 1) * s)
    return (s * 1000).astype(np.int64).tolist()


def test_the_reference_keeps_sigma_max_as_the_float32_of_0_999():
    assert float(np.float32(0.999)) == pytest.approx(0.99900001287, abs=1e-11)
    # N = 30, call 10: σ = σ_max (1 - 10/30) = 0.66600000858 -> 666 (0.999 exactly gives 665.99999...)
    assert reference_timesteps(30, 1.0)[10] == 666


@pytest.mark.parametrize("shift", [1.0, 8.0, 5.0, 3.0])
def test_skyreels_integer_timesteps_equal_the_references_for_1_to_100_steps(shift):
    from accelframe_adapters.wan.unipc import model_timesteps, sigmas

    bad = {n: (model_timesteps(sigmas(n, shift)), reference_timesteps(n, shift)) for n in range(1, 101)
           if model_timesteps(sigmas(n, shift)) != reference_timesteps(n, shift)}
    assert not bad, f"{len(bad)} step counts differ, first: {next(iter(bad.items()))}"


def test_the_skyreels_model_receives_the_references_timesteps():
    """The DiT itself sees 666 at call 10 of 30 steps at shift 1 (one latent frame, no guidance)."""
    from accelframe.pipeline import Pipeline
    from accelframe.testing.fixtures import make_hooks
    from accelframe_adapters import plugin as adapters_plugin
    from accelframe_adapters.wan.skyreels_df import SkyReelsDFAdapter

    a = SkyReelsDFAdapter(num_inference_steps=30, shift=1.0, guidance_scale=1.0, size="tiny", height=32,
                          width=32, base_num_frames=1)
    seen: list[float] = []
    a.dit.register_forward_pre_hook(lambda module, args: seen.append(float(args[1].flatten()[0])))
    Pipeline(a, hooks=make_hooks(adapters_plugin)).generate("a red circle", num_frames=1, seed=0, decode=False)
    assert seen == reference_timesteps(30, 1.0)
    assert seen[10] == 666


# ------------------------------------------------------------------------------------------------
# motion-noise: the first chunk of a stream
# ------------------------------------------------------------------------------------------------


def _ctx(frames, previous=None, stream="s", unit=0):
    return NoiseContext(stream=stream, unit=unit, frames=frames, default_sigma=0.7, previous=previous)


def _steps(k: int, step: float, start: float = 0.0) -> torch.Tensor:
    """``k`` frames [k, 3, 2, 2] in [0, 1]: start, start + step, ..."""
    return torch.stack([torch.full((3, 2, 2), start + step * i) for i in range(k)])


def test_motion_noise_noises_a_streams_first_chunk_at_the_initial_level():
    """The reference noises chunk 0 at ``noise_scale`` (0.8) and runs the controller from chunk 1
    on: s_1 = 0.9 (0.8 - 0.1 d̂_1) + 0.1 · 0.8. A fast first chunk (d̂ = 1) is 0.8, not
    0.9 · 0.7 + 0.1 · 0.8 = 0.71."""
    p = MotionNoise()
    fast = _steps(5, 0.1)  # 0.2 per frame in [-1, 1]: d̂ = 1
    assert p.accelframe_noise_level(_ctx(fast)) == pytest.approx(0.8)
    s1 = p.accelframe_noise_level(_ctx(_steps(4, 0.1, 0.5), previous=fast[-1], unit=1))
    assert s1 == pytest.approx(0.71)  # 0.9 · 0.7 + 0.1 · 0.8
    s2 = p.accelframe_noise_level(_ctx(_steps(4, 0.0, 0.8), previous=torch.full((3, 2, 2), 0.8), unit=2))
    assert s2 == pytest.approx(0.9 * 0.8 + 0.1 * 0.71)  # a still chunk: target 0.8
    assert [round(e["s"], 6) for e in p.history("s")] == [0.8, 0.71, 0.791]
    # another stream starts at the initial level too, whatever its motion
    assert p.accelframe_noise_level(_ctx(fast, stream="t")) == pytest.approx(0.8)


def test_motion_noise_first_chunk_starts_at_s_max_with_other_knobs():
    p = MotionNoise(s_min=0.3, s_max=0.6, ema=0.5, scale=0.1)
    jump = _steps(2, 0.05)  # 0.1 in [-1, 1]: d̂ = 1
    assert p.accelframe_noise_level(_ctx(jump)) == pytest.approx(0.6)
    s1 = p.accelframe_noise_level(_ctx(_steps(2, 0.025, 0.05), previous=jump[-1]))  # 0.05: d̂ = 0.5
    assert s1 == pytest.approx(0.5 * (0.6 - 0.3 * 0.5) + 0.5 * 0.6)
    p.reset()  # a new run: its first chunk is a first chunk again
    assert p.accelframe_noise_level(_ctx(jump)) == pytest.approx(0.6)
