"""The embedded world's clip generator and its analytic quality measure."""

from __future__ import annotations

import attrs
import pytest
import torch

from accelframe.errors import ConfigError
from accelframe_adapters.world import clips, quality

SCENE = clips.Scene(shape="circle", colour="red", direction="left", background="blue")


def test_prompt_grammar_and_parse_round_trip():
    assert SCENE.prompt == "a red circle moves left on a blue background"
    full = attrs.evolve(SCENE, size="small", speed="quickly")
    assert full.prompt == "a small red circle moves quickly left on a blue background"
    assert clips.parse_prompt(full.prompt) == full
    assert clips.parse_prompt("a big red circle moves left on a blue background").size == "large"
    assert clips.parse_prompt("a red circle") is None  # no direction, no background
    assert clips.parse_prompt("a red circle moves left on a red background") is None


def test_thousands_of_prompts_and_a_disjoint_held_out_split():
    scenes = list(clips.all_scenes())
    assert len({s.prompt for s in scenes}) == len(scenes) == 9720
    combos = clips.all_combinations()
    held = [c for c in combos if clips.held_out(c)]
    assert 0.08 < len(held) / len(combos) < 0.18
    train = {s.combination for s in clips.sample_scenes(400, 0)}
    ev = {s.combination for s in clips.sample_scenes(200, 0, split="eval")}
    assert not train & ev and ev <= set(held)
    assert clips.held_out(("circle", "red", "left", "blue")) is False  # the README prompt is a training one


def test_render_is_deterministic_in_range_and_stays_inside_the_frame():
    a, b = clips.render(SCENE, 3), clips.render(SCENE, 3)
    assert a.shape == (105, 3, 64, 64) and torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert not torch.equal(a, clips.render(SCENE, 4))
    assert torch.equal(clips.render(SCENE, 3, span=(10, 15)), a[10:15])
    for seed in range(20):
        m = clips.draw_motion(attrs.evolve(SCENE, size="large", speed="quickly"), seed)
        for f in (0, 104):
            x, y = m.centre(f)
            assert m.radius <= x <= 64 - m.radius and m.radius <= y <= 64 - m.radius


def test_paths_start_at_the_centre_up_to_the_jitter():
    starts = []
    for seed in range(40):
        for direction in clips.DIRECTIONS:
            for size, speed in (("small", "slowly"), ("large", "quickly")):
                m = clips.draw_motion(attrs.evolve(SCENE, direction=direction, size=size, speed=speed), seed)
                x, y = m.centre(0)
                assert abs(x - 32) <= clips.JITTER + 1e-6 and abs(y - 32) <= clips.JITTER + 1e-6
                starts.append((x, y))
    assert len(set(starts)) == len(starts)  # the seed still moves the path


def test_motion_follows_the_prompt():
    m = clips.draw_motion(attrs.evolve(SCENE, direction="down", speed="slowly", size="small"), 1)
    assert m.step[0] == 0 and 0.08 <= m.step[1] <= 0.09 and 7.5 <= m.radius <= 8.5


def test_bad_scenes_raise_naming_the_field():
    with pytest.raises(ConfigError, match="Scene.shape = 'hexagon'"):
        clips.Scene(shape="hexagon", colour="red", direction="left", background="blue")
    with pytest.raises(ConfigError, match="background"):
        clips.Scene(shape="circle", colour="red", direction="left", background="red")
    with pytest.raises(ConfigError, match="span"):
        clips.render(SCENE, 0, span=(5, 200))


def test_quality_of_a_rendered_clip_is_near_one_and_adheres():
    q = quality.measure(clips.render(SCENE, 0), SCENE)
    assert q.adheres and q.quality > 0.95
    assert q.presence == 1.0 and q.sharpness == 1.0 and q.background == 1.0 and q.motion == 1.0
    assert q.measured_shape == "circle" and q.measured_direction == "left"
    assert q.velocity[0] == pytest.approx(-clips.draw_motion(SCENE, 0).speed, abs=0.01)


@pytest.mark.parametrize("field, value, part", [("shape", "triangle", "shape_ok"),
                                                ("direction", "right", "direction_ok"),
                                                ("colour", "yellow", "colour_ok")])
def test_quality_catches_a_clip_that_shows_something_else(field, value, part):
    video = clips.render(SCENE, 0)
    q = quality.measure(video, attrs.evolve(SCENE, **{field: value}))
    assert not getattr(q, part) and not q.adheres


def test_quality_drops_for_noise_blur_and_jitter():
    video = clips.render(SCENE, 0)
    base = quality.measure(video, SCENE)
    noise = quality.measure(torch.rand(video.shape, generator=torch.Generator().manual_seed(0)), SCENE)
    assert noise.presence == 0.0 and noise.quality < 0.15
    blurred = quality.measure(torch.nn.functional.avg_pool2d(video, 5, 1, 2), SCENE)
    assert blurred.sharpness < base.sharpness - 0.1
    jitter = video.clone()
    jitter[::3] = torch.roll(video[::3], 2, dims=3)  # every third frame jumps 2 px sideways
    assert base.smoothness > 0.95 and quality.measure(jitter, SCENE).smoothness < 0.5


def test_quality_hand_computed_parts():
    # latent frame f > 0 decodes to pixel frames 1 + 4 (f - 1) .. 4 f: blocks of 3 start at f = 3, 6, ...
    assert quality.boundary_pairs(105) == [8, 20, 32, 44, 56, 68, 80, 92]
    assert quality.boundary_pairs(9) == []
    # a frame of pure world colours segments exactly; a colour between two is unmatched
    frame = torch.zeros(1, 3, 2, 2)
    frame[0, :, 0, 0] = torch.tensor(clips.COLOURS["red"])
    frame[0, :, 0, 1] = torch.tensor(clips.COLOURS["blue"])
    frame[0, :, 1, 0] = torch.tensor(clips.COLOURS["white"])
    frame[0, :, 1, 1] = torch.tensor([0.3, 0.9, 0.6])  # 0.31 from cyan, the nearest world colour
    names = list(clips.COLOURS)
    assert quality.segment(frame)[0].tolist() == [[names.index("red"), names.index("blue")],
                                                  [names.index("white"), -1]]
    # a clip with no object: presence, shape and motion are 0, the background part is full
    empty = torch.tensor(clips.COLOURS["blue"]).view(1, 3, 1, 1).expand(21, 3, 64, 64)
    q = quality.measure(empty, SCENE)
    assert (q.presence, q.shape, q.motion, q.background, q.sharpness) == (0.0, 0.0, 0.0, 1.0, 1.0)
    assert q.quality == pytest.approx(2 / 6)


def test_summary_averages_parts_and_counts_adherence():
    video = clips.render(SCENE, 0)
    good, bad = quality.measure(video, SCENE), quality.measure(video, attrs.evolve(SCENE, direction="up"))
    s = quality.summarise([good, bad])
    assert s["adherence"] == 0.5 and s["clips"] == 2
    assert s["quality"] == pytest.approx((good.quality + bad.quality) / 2)


def test_the_measure_as_a_scorer_gives_every_frame_of_a_row_its_clips_quality():
    """``world-quality`` (registered): row b of ``[B, T]`` is ``measure`` of that row's frames as one
    clip, repeated over its T frames; a clip of another colour scores lower; prompts outside the world
    and wrongly shaped frames are ConfigErrors naming the field."""
    from accelframe.plugins import create_hooks
    from accelframe_adapters import plugin

    hooks = create_hooks(autoload=False, disabled=(), plugins=(plugin,))
    scorer = hooks.registry().get("scorer", "world-quality").factory()
    good = clips.render(SCENE, 0, span=(0, 12))
    wrong = clips.render(attrs.evolve(SCENE, colour="yellow"), 0, span=(0, 12))
    got = scorer(torch.stack([good, wrong]), [SCENE.prompt] * 2)
    assert got.shape == (2, 12) and bool((got == got[:, :1]).all())
    assert got[0, 0].item() == pytest.approx(quality.measure(good, SCENE).quality)
    assert got[1, 0].item() == pytest.approx(quality.measure(wrong, SCENE).quality)
    assert got[0, 0] > got[1, 0] + 0.3
    with pytest.raises(ConfigError, match="world-quality.prompts = 'a cat'"):
        scorer(good[None], ["a cat"])
    with pytest.raises(ConfigError, match="world-quality.frames"):
        scorer(good, [SCENE.prompt])
    with pytest.raises(ConfigError, match="world-quality.prompts = 2"):
        scorer(good[None], [SCENE.prompt] * 2)


def test_picture_is_full_for_a_rendering_in_view_or_not_and_drops_for_blur_and_seams():
    video = clips.render(SCENE, 0)
    assert quality.measure(video, SCENE).picture == pytest.approx(1.0, abs=1e-3)
    empty = torch.tensor(clips.COLOURS["blue"]).view(1, 3, 1, 1).expand(21, 3, 64, 64)
    q = quality.measure(empty, SCENE)
    assert q.quality == pytest.approx(2 / 6) and q.picture == pytest.approx(1.0)  # the shape has left
    # hand-computed: a third of the pixels of no world colour, the rest the background; no seams
    smudged = empty.clone()
    smudged[:, :, :, :21] = torch.tensor([0.3, 0.9, 0.6]).view(1, 3, 1, 1)  # 0.31 from cyan
    q = quality.measure(smudged, SCENE)
    assert q.purity == pytest.approx(43 / 64)
    assert q.picture == pytest.approx((43 / 64 / 0.97 + 1.0 + 43 / 64 / 0.88) / 3)
    # a seam: every block's first frame jumps while frames inside the blocks are still
    seams = empty.clone()
    seams[quality.boundary_pairs(21)[0] + 1:] += 0.05  # still inside the blocks, a step at the seam
    q = quality.measure(seams, SCENE)
    assert q.boundary < 0.1 and q.purity == 1.0 and q.picture < 0.7
    blurred = quality.measure(torch.nn.functional.avg_pool2d(video, 5, 1, 2), SCENE)
    assert blurred.picture < 1.0 - 0.02
