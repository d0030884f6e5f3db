"""The ``world`` stream source: a clip of the embedded tiny world rendered from a stream's prompt.

Registered through ``accelframe_register_sources`` (``accelframe stream --source world``, the
command's default), so the core's stream command renders the world without importing it.
"""

from __future__ import annotations

from typing import Any

import attrs

from accelframe.errors import ConfigError
from accelframe.streaming.source import LoopedFrames
from accelframe_adapters.world import clips

# streams started without a prompt get held-out scenes sampled with PROMPT_SEED + the run's seed,
# so a run's prompts are fixed by its --seed
PROMPT_SEED = 9_000


@attrs.frozen
class WorldSource:
    """Input video of the tiny world: ``clip`` renders a prompt, ``prompts`` draws held-out ones."""

    def clip(self, prompt: str, seed: int, frames: int) -> Any:
        """The world's rendering of ``prompt`` over ``frames`` pixel frames: a tensor
        ``[F, 3, 64, 64]`` in [0, 1], or a looped clip when longer than one clip."""
        scene = clips.parse_prompt(prompt)
        if scene is None:
            raise ConfigError("world source", "prompt", prompt,
                              "a world prompt such as 'a red circle moves left on a blue background'")
        clip = clips.render(scene, seed, frames=min(frames, clips.PIXEL_FRAMES))  # [F, 3, 64, 64]
        return clip if frames <= clip.shape[0] else LoopedFrames(clip, frames)

    def prompts(self, n: int, seed: int) -> list[str]:
        """``n`` prompts of scenes held out of the world's training."""
        return [s.prompt for s in clips.sample_scenes(n, PROMPT_SEED + seed, split="eval")]


__all__ = ["WorldSource"]
