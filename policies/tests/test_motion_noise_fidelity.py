"""Fidelity of the motion-aware noise controller against StreamDiffusionV2's reference
(``streamv2v/inference.py``): the level of each chunk of a stream, recomputed here by hand."""

from __future__ import annotations

import pytest
import torch

from accelframe.types import NoiseContext
from accelframe_policies.motion_noise import MotionNoise

pytestmark = pytest.mark.usefixtures("one_thread")

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
