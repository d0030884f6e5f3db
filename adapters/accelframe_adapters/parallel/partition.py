"""Contiguous partitions of DiT blocks over pipeline ranks, and the balancing rule that picks them.

A partition is the tuple of its bounds ``(0, b_1, ..., b_{R-1}, L)``: rank ``r`` runs blocks
``[bounds[r], bounds[r + 1])``. A stage's time is the rank's fixed overhead (rank 0: noise, the
solver step, patch and time embeddings, decoding; the last rank: the head) plus the times of its
blocks. :func:`balance` returns the partition that minimises the slowest stage (the pipeline's
period), and among those the one that moves the fewest blocks from the current partition, so a
rebalance never shuffles blocks for nothing.
"""

from __future__ import annotations

from typing import Sequence

from accelframe.errors import ConfigError

Bounds = tuple[int, ...]


def even_partition(num_layers: int, ranks: int) -> Bounds:
    """Blocks split as evenly as possible, earlier ranks taking the remainder last (rank 0 carries
    the embedding and the solver, so it gets the smaller share)."""
    check_counts(num_layers, ranks)
    base, extra = divmod(num_layers, ranks)
    bounds = [0]
    for r in range(ranks):
        bounds.append(bounds[-1] + base + (1 if r >= ranks - extra else 0))
    return tuple(bounds)


def check_counts(num_layers: int, ranks: int, min_blocks: int = 1) -> None:
    if ranks < 1:
        raise ConfigError("pipeline", "ranks", ranks, "at least 1")
    if num_layers < ranks * min_blocks:
        raise ConfigError("pipeline", "ranks", ranks,
                          f"at most {num_layers // max(min_blocks, 1)} ranks: the DiT has {num_layers} blocks "
                          f"and every rank runs at least {min_blocks}")


def check_partition(bounds: Sequence[int], num_layers: int, ranks: int, min_blocks: int = 1) -> Bounds:
    """``bounds`` as a tuple, or a :class:`ConfigError` saying what is wrong with it."""
    bounds = tuple(int(b) for b in bounds)
    ok = (len(bounds) == ranks + 1 and bounds[0] == 0 and bounds[-1] == num_layers
          and all(b - a >= min_blocks for a, b in zip(bounds, bounds[1:])))
    if not ok:
        raise ConfigError("pipeline", "partition", bounds,
                          f"{ranks + 1} increasing bounds from 0 to {num_layers}, each rank holding at least "
                          f"{min_blocks} block(s), e.g. {even_partition(num_layers, ranks)}")
    return bounds


def owner(bounds: Sequence[int], layer: int) -> int:
    """The rank that runs block ``layer``."""
    for r in range(len(bounds) - 1):
        if bounds[r] <= layer < bounds[r + 1]:
            return r
    raise IndexError(f"block {layer} is outside the partition {tuple(bounds)}")


def stage_times(bounds: Sequence[int], block_times: Sequence[float],
                rank_overheads: Sequence[float]) -> list[float]:
    """Per rank: its overhead plus the times of its blocks."""
    return [rank_overheads[r] + sum(block_times[bounds[r]:bounds[r + 1]]) for r in range(len(bounds) - 1)]


def period(bounds: Sequence[int], block_times: Sequence[float], rank_overheads: Sequence[float]) -> float:
    """The slowest stage: a full pipeline finishes one call per period."""
    return max(stage_times(bounds, block_times, rank_overheads))


def moved_blocks(old: Sequence[int], new: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(block, from_rank, to_rank)`` for every block whose owner changes, in block order."""
    out = []
    for layer in range(old[-1]):
        a, b = owner(old, layer), owner(new, layer)
        if a != b:
            out.append((layer, a, b))
    return out


def balance(block_times: Sequence[float], rank_overheads: Sequence[float], ranks: int, *,
            current: Sequence[int] | None = None, min_blocks: int = 1) -> Bounds:
    """The contiguous partition of ``block_times`` over ``ranks`` that minimises the slowest stage
    (``rank_overheads[r]`` + the blocks of rank ``r``), each rank holding at least ``min_blocks``.

    Exact, in two dynamic programmes over prefixes (O(R L^2)): the first finds the least period T*,
    the second, among partitions whose every stage is within T*, the one whose bounds are nearest
    to ``current`` (sum of |b_r - c_r|: the blocks a rebalance moves); without ``current``, the
    nearest to an even split. Ties keep the earliest bounds.
    """
    n = len(block_times)
    check_counts(n, ranks, min_blocks)
    if len(rank_overheads) != ranks:
        raise ConfigError("balance", "rank_overheads", list(rank_overheads), f"{ranks} values, one per rank")
    prefix = [0.0]
    for t in block_times:
        prefix.append(prefix[-1] + float(t))

    def stage(r: int, i: int, j: int) -> float:
        return float(rank_overheads[r]) + prefix[j] - prefix[i]

    inf = float("inf")
    # best[r][j]: the least period of blocks [0, j) over ranks 0..r
    best = [[inf] * (n + 1) for _ in range(ranks)]
    for j in range(min_blocks, n + 1):
        best[0][j] = stage(0, 0, j)
    for r in range(1, ranks):
        for j in range((r + 1) * min_blocks, n + 1):
            best[r][j] = min(max(best[r - 1][i], stage(r, i, j))
                             for i in range(r * min_blocks, j - min_blocks + 1))
    limit = best[ranks - 1][n]
    limit += 1e-9 * max(abs(limit), 1.0)  # float slack: sums in another order may differ in the last bit

    target = tuple(current) if current is not None else even_partition(n, ranks)
    # cost[r][j]: fewest moved bounds placing ranks 0..r over [0, j) with every stage <= limit
    cost = [[inf] * (n + 1) for _ in range(ranks)]
    back = [[-1] * (n + 1) for _ in range(ranks)]
    for j in range(min_blocks, n + 1):
        if stage(0, 0, j) <= limit:
            cost[0][j] = abs(j - target[1]) if ranks > 1 else 0
    for r in range(1, ranks):
        for j in range((r + 1) * min_blocks, n + 1):
            here = abs(j - target[r + 1]) if r + 1 < ranks else 0
            for i in range(r * min_blocks, j - min_blocks + 1):
                if cost[r - 1][i] < inf and stage(r, i, j) <= limit and cost[r - 1][i] + here < cost[r][j]:
                    cost[r][j], back[r][j] = cost[r - 1][i] + here, i
    bounds = [n]
    for r in range(ranks - 1, 0, -1):
        bounds.append(back[r][bounds[-1]])
    bounds.append(0)
    return tuple(reversed(bounds))


def worth_moving(current: Sequence[int], proposed: Sequence[int], block_times: Sequence[float],
                 rank_overheads: Sequence[float], min_gain: float) -> bool:
    """Whether ``proposed`` shortens the period by at least ``min_gain`` (a fraction) of the
    current one: measured times are noisy, and moving blocks costs a drain and a KV transfer."""
    if tuple(proposed) == tuple(current):
        return False
    now = period(current, block_times, rank_overheads)
    return now - period(proposed, block_times, rank_overheads) >= min_gain * now


__all__ = ["Bounds", "balance", "check_partition", "even_partition", "moved_blocks", "owner", "period",
           "stage_times", "worth_moving"]
