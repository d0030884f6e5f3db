"""Random routing: SDVG's ablation baseline (its Table 2), a BlockPolicy that ignores the drafts.

Each drafted block after block 0 is accepted with probability ``accept_rate``, decided by a coin
seeded from (``seed``, the prompts, the unit), so a run is reproducible and the coin does not depend
on what other runs came before. Block 0 is always regenerated, as in SDVG. Nothing is scored, and
the verdict comes before the draft is decoded (``accelframe_block_early_verdict``): set
``accept_rate`` to the rate a reward-routed run measured to compare the two at a matched rate.
"""

from __future__ import annotations

import random
from typing import ClassVar

import attrs

from accelframe import hookimpl
from accelframe.types import BlockContext, BlockVerdict
from accelframe.validators import number_in


@attrs.define(eq=False, kw_only=True)
class RandomRouting:
    """Accept a drafted block (not block 0) with probability ``accept_rate``."""

    accept_rate: float = attrs.field(default=0.5, validator=number_in(0.0, 1.0))
    seed: int = attrs.field(default=0, validator=number_in(0, 2**63 - 1, integer=True))
    name: ClassVar[str] = "random-routing"  # the stack name; not a keyword argument

    def coin(self, prompts: tuple[str, ...], unit: int) -> float:
        """The block's uniform draw in [0, 1)."""
        return random.Random(f"{self.seed}|{'|'.join(prompts)}|{unit}").random()

    @hookimpl
    def accelframe_block_early_verdict(self, ctx: BlockContext) -> BlockVerdict:
        """The coin needs no pixels: every verdict is given before the draft is decoded, so a
        rejected draft is never decoded and an accepted one once, to be emitted."""
        if ctx.unit == 0:
            return BlockVerdict.regenerate(reason="block 0 is always regenerated")
        u = self.coin(tuple(ctx.prompts), ctx.unit)
        if u < self.accept_rate:
            return BlockVerdict.accept(reason=f"coin {u:.3f} < {self.accept_rate:g}")
        return BlockVerdict.regenerate(reason=f"coin {u:.3f} >= {self.accept_rate:g}")


__all__ = ["RandomRouting"]
