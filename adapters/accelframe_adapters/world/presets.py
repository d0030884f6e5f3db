"""The embedded world's presets: its trained models as the ``size`` values the adapters run by name.

``world`` and ``world-drafter`` for the Wan families (the trained target and drafter, with the world's
VAE and word encoder), ``world`` for ``magi-1``; each with the clip length and frame size it was
trained on, the loop knobs measured best for it, and the world's analytic quality measure. The
adapters' registration (:mod:`accelframe_adapters.plugin`) hands :data:`PRESETS` to
:mod:`accelframe_adapters.presets`, so no adapter imports the world. This module imports no torch:
a preset is built by its function on first use.
"""

from __future__ import annotations

from typing import Any, Callable

from accelframe_adapters.presets import Preset

# Knobs the Wan families take by default with the world's models (the user's values win).
WAN_DEFAULTS: dict[str, dict[str, Any]] = {
    # the world's DiTs are not distilled: light guidance was measured best on held-out prompts
    # (adherence 0.56 at 1.5 against 0.38 without and 0.44 at 2.0; docs/world.md)
    "self-forcing": {"guidance_scale": 1.5},
    # the world DiT was trained block-causal in blocks of 3 on 105-frame clips; 30 steps and
    # guidance as the reference (see docs/world.md for the measured choice)
    "skyreels-v2-df": {"causal_block_size": 3, "base_num_frames": 105, "guidance_scale": 3.0},
}


def distilled_defaults(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Wan knobs of a DiT whose training record says it was distilled to a few steps
    (``world distill`` stores ``student_steps``): the self-forcing loop runs those steps without
    guidance (distillation baked the teacher's guidance in); others take :data:`WAN_DEFAULTS`."""
    steps = record.get("student_steps")
    if not steps:
        return WAN_DEFAULTS
    return {**WAN_DEFAULTS, "self-forcing": {"denoising_step_list": tuple(steps), "guidance_scale": 1.0}}


def _wan(name: str, part: str) -> Preset:
    from accelframe.errors import CheckpointError
    from accelframe_adapters.world import clips, models, quality

    try:
        record = models.read_metadata(models.weights_path(part)).get("training", {})
    except CheckpointError:  # a missing or damaged file: the adapter's load reports it, naming it
        record = {}

    # attributes are looked up at call time: a test may point models.WEIGHTS elsewhere
    return Preset(
        name=name, family="wan", latent_frames=models.LATENT_FRAMES, frame_size=(clips.HEIGHT, clips.WIDTH),
        dit_config=lambda: (models.target_config if part == "target" else models.drafter_config)(),
        load=lambda **kw: models.load_dit(part, **kw),
        weights_file=lambda what: str(models.weights_path(what)),
        defaults=distilled_defaults(record),
        measure_quality=lambda frames, prompts, **kw: quality.measure_prompts(frames, prompts, **kw),
        describe_quality=lambda record: quality.describe(record))


def wan_target() -> Preset:
    """``size="world"`` of the Wan families: the world's trained target DiT."""
    return _wan("world", "target")


def wan_drafter() -> Preset:
    """``size="world-drafter"`` of the Wan families: the world's drafter DiT (distilled to one step:
    the self-forcing loop runs it with ``denoising_step_list=(1000,)`` and no guidance)."""
    return _wan("world-drafter", "drafter")


def magi() -> Preset:
    """``size="world"`` of ``magi-1``: the world's trained MAGI model."""
    from accelframe_adapters.world import clips, magi_model, models, quality

    return Preset(
        name="world", family="magi", latent_frames=magi_model.LATENT_FRAMES,
        frame_size=(clips.HEIGHT, clips.WIDTH), dit_config=lambda: magi_model.config(),
        load=lambda **kw: magi_model.load(**kw), defaults={"magi-1": magi_model.LOOP_DEFAULTS},
        weights_file=lambda what: str(models.weights_path(what)),
        measure_quality=lambda frames, prompts, **kw: quality.measure_prompts(frames, prompts, **kw),
        describe_quality=lambda record: quality.describe(record))


# (family, size, the function that builds it): what the registration hands to accelframe_adapters.presets
PRESETS: tuple[tuple[str, str, Callable[[], Preset]], ...] = (
    ("wan", "world", wan_target),
    ("wan", "world-drafter", wan_drafter),
    ("magi", "world", magi),
)

__all__ = ["PRESETS", "WAN_DEFAULTS", "distilled_defaults", "magi", "wan_drafter", "wan_target"]
