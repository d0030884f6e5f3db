"""Fidelity of SkyReels-V2's timesteps against the reference code (``FlowUniPCMultistepScheduler``):
the integer timesteps the model receives, recomputed here by hand."""

from __future__ import annotations

import numpy as np
import pytest

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
