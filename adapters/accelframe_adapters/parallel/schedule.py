"""The pipeline-parallel stream batch's schedule: which chunk runs which denoising step when.

With ``S`` denoising steps and ``R`` ranks (the lag), chunk ``c`` runs step ``s`` at micro-step
``c + s R``, and its clean latent is committed (the commit pass writes its K/V into the cache) at
micro-step ``c + S R``, *before* that micro-step's denoising rows, so they see it. A micro-step's
rows are therefore the chunks ``m, m - R, ..., m - (S - 1) R`` of one residue class ``m mod R``:
the *slot* that circulates in the ring. Rank 0 takes slot ``m mod R`` at micro-step ``m``; its rows
came back from the last rank ``R`` micro-steps earlier, advanced one step, with the chunk that
finished there (the commit row). With ``R = 1`` this is the single-process stream batch of
:mod:`accelframe.streaming.batch`: chunk ``c`` is visible to every row from micro-step ``c + S`` on.

The run has ``N + (S - 1) R`` micro-steps for ``N`` chunks (the last chunk's last step is micro-step
``N - 1 + (S - 1) R``); the commits of the last ``R`` chunks would come after every row and are
skipped. With ``N >= R`` every micro-step has at least one row (the runtime asks for that).

This module is the one definition of the schedule: the single-process reference and the ranks
both call :func:`micro_step`.
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class MicroStep:
    """What runs at micro-step ``index``: the commit row (a chunk, or None), then the denoising rows
    ``(chunk, step)``, oldest chunk first (the stream batch's row order)."""

    index: int
    slot: int
    commit: int | None
    rows: tuple[tuple[int, int], ...]
    steps: int  # S, the denoising steps of every chunk

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(c for c, _ in self.rows)

    @property
    def finishing(self) -> int | None:
        """The chunk whose last step runs here (it leaves the pipe clean), or None."""
        return next((c for c, s in self.rows if s == self.steps - 1), None)

    @property
    def entering(self) -> int | None:
        """The chunk whose first step runs here (its start noise is drawn here), or None."""
        return next((c for c, s in self.rows if s == 0), None)


def micro_steps(chunks: int, steps: int, ranks: int) -> int:
    """How many micro-steps ``chunks`` chunks of ``steps`` steps take through a lag-``ranks`` pipe."""
    return chunks + (steps - 1) * ranks


def micro_step(m: int, *, chunks: int, steps: int, ranks: int) -> MicroStep:
    """The plan of micro-step ``m`` (see the module docstring)."""
    total = micro_steps(chunks, steps, ranks)
    assert 0 <= m < total, f"micro-step {m} outside [0, {total})"
    rows = tuple((m - s * ranks, s) for s in reversed(range(steps)) if 0 <= m - s * ranks < chunks)
    c = m - steps * ranks
    commit = c if 0 <= c < chunks else None
    return MicroStep(index=m, slot=m % ranks, commit=commit, rows=rows, steps=steps)


def schedule(chunks: int, steps: int, ranks: int) -> list[MicroStep]:
    """Every micro-step of a run, in order."""
    return [micro_step(m, chunks=chunks, steps=steps, ranks=ranks)
            for m in range(micro_steps(chunks, steps, ranks))]


def steady_window(chunks: int, steps: int, ranks: int, after: int = 0) -> tuple[int, int] | None:
    """Micro-steps ``[first, last]`` where the pipe is full (a commit and ``S`` rows every
    micro-step), from ``after`` on; None when the run has fewer than two of them."""
    first, last = max(steps * ranks, after), chunks - 1
    return (first, last) if last > first else None


__all__ = ["MicroStep", "micro_step", "micro_steps", "schedule", "steady_window"]
