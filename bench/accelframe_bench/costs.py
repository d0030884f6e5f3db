"""What a run's decisions would cost at real scale: a cost table per component, and the price of a
run's counted work under it (issue 23 item 6).

A :class:`CostTable` gives, at one of the papers' configurations, the seconds of each component:
a target denoising call, a drafter call, a commit pass of each, the decode of one latent frame, the
score of one pixel frame. :class:`Counts` is what a run did, counted from its statistics; and
:func:`price` is the seconds that work costs under a table. The benches report, beside the speedup
measured on the world, the ratio of the baseline's price to a row's price: the speedup the same
decisions give at that configuration, "projected at <configuration>".

Pricing is a sum: every call at its component's cost, nothing overlapped, no batching gain (at real
scale one 3-frame call of a 1.3B or 14B model already fills a GPU). A stream batch's batched forward
over R rows is priced as R calls.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class CostTable:
    """Seconds per component at ``config``; ``source`` says where the numbers come from."""

    config: str
    target_call_s: float
    drafter_call_s: float
    target_commit_s: float
    drafter_commit_s: float
    decode_per_latent_frame_s: float
    score_per_pixel_frame_s: float
    source: str
    detail: dict[str, Any] = attrs.field(factory=dict)  # FLOPs and assumptions behind the numbers

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class Counts:
    """The work one run did (per video, or summed over videos: pricing is linear)."""

    target_calls: int = 0
    drafter_calls: int = 0
    target_commits: int = 0
    drafter_commits: int = 0
    decoded_latent_frames: int = 0
    scored_pixel_frames: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                         for f in attrs.fields(Counts)})


def price(counts: Counts, table: CostTable) -> float:
    """Seconds ``counts`` cost under ``table``: every component at its cost, summed."""
    return (counts.target_calls * table.target_call_s + counts.drafter_calls * table.drafter_call_s
            + counts.target_commits * table.target_commit_s
            + counts.drafter_commits * table.drafter_commit_s
            + counts.decoded_latent_frames * table.decode_per_latent_frame_s
            + counts.scored_pixel_frames * table.score_per_pixel_frame_s)


def counts_of(stats: dict[str, Any], *, unit_latent_frames: int, unit_pixel_frames: int) -> Counts:
    """The work of a run from its ``stats.to_dict()``: computed calls and commit passes per model,
    the latent frames decoded (every emitted frame once, plus a unit for every wasted decode of a
    rejected draft), and the pixel frames scored (every judged block's frames)."""
    calls, blocks = stats.get("calls", {}), stats.get("blocks", {})
    target, drafter = calls.get("target", {}), calls.get("drafter", {})
    judged = int(blocks.get("accepted", 0)) + int(blocks.get("regenerated", 0))
    return Counts(
        target_calls=int(target.get("computed", 0)), drafter_calls=int(drafter.get("computed", 0)),
        target_commits=int(target.get("commit", 0)), drafter_commits=int(drafter.get("commit", 0)),
        decoded_latent_frames=int(stats.get("frames", 0))
        + int(blocks.get("decodes_wasted", 0)) * unit_latent_frames,
        scored_pixel_frames=judged * unit_pixel_frames)


__all__ = ["CostTable", "Counts", "counts_of", "price"]
