"""One rank's loop of the pipeline-parallel stream batch (and, on a loopback, the single-process
reference of the same schedule): receive, run its blocks, send on; rebalance once.

Per micro-step ``m`` (:func:`~accelframe_adapters.parallel.schedule.micro_step`):

- rank 0 takes the rows of slot ``m mod R`` that came back from the last rank (posting the receive
  of the next return before it computes), draws the entering chunk's noise, embeds, runs its blocks
  and sends the tokens on;
- a middle rank receives, runs its blocks, sends on;
- the last rank runs its blocks, the head, guidance and the solver step of every row, sends the
  rows back to rank 0 (unless no later micro-step needs them), keeps the finished chunk's clean
  latent and, with ``decode``, decodes it with the VAE's streaming decode.

Rebalancing (paper section 4.2): over the ``measure`` micro-steps before ``rebalance_at`` every rank
times its blocks and its own overhead; the times ride the ring to rank 0, which computes
:func:`~accelframe_adapters.parallel.partition.balance` and, if :func:`worth_moving`, announces the new
bounds in the header of micro-step ``rebalance_at + R``; every rank switches after micro-step
``rebalance_at + R``, the old owner of each moved block sending its K/V to the new owner first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import attrs
import torch

from accelframe_adapters.parallel import partition as part
from accelframe_adapters.parallel.comm import Header, Pending, Spec
from accelframe_adapters.parallel.schedule import MicroStep, micro_step, micro_steps, steady_window
from accelframe_adapters.parallel.stage import BlockTimer, Hidden, Stage
from accelframe_adapters.wan.common import WanState

log = logging.getLogger("accelframe.pipeline_parallel")


@attrs.frozen(kw_only=True, eq=False)
class RankResult:
    """What a rank hands back: the last rank (or the reference) has the latents ``[1, F, C, H, W]``
    and, with decode, the frames ``[1, P, 3, H, W]``; every rank has its log."""

    latents: torch.Tensor | None
    frames: torch.Tensor | None
    log: dict[str, Any]


class Runner:
    """See the module docstring. ``world`` 1 with a loopback link is the single-process reference
    of the lag-``lag`` schedule; ``world == lag`` ranks is the pipeline."""

    def __init__(self, cfg: Any, adapter: Any, *, rank: int, world: int, lag: int, link: Any) -> None:
        self.cfg, self.ad, self.link = cfg, adapter, link
        self.rank, self.world, self.lag = rank, world, lag
        self.stage = Stage(adapter, prompt=cfg.prompt, seed=cfg.seed)
        st = self.stage
        self.F, self.S, self.L = st.frames, st.steps, st.num_layers
        self.N = cfg.frames // self.F
        self.M = micro_steps(self.N, self.S, lag)
        self.first, self.last = rank == 0, rank == world - 1
        self.bounds = tuple(cfg.partition) if cfg.partition and world > 1 else part.even_partition(self.L, world)
        self.start_bounds = self.bounds
        self.kv = adapter.new_kv()
        self.timer = BlockTimer(self.L, adapter.device)
        self.rows: dict[int, Any] = {}  # last rank: chunk -> Row (its generator and steps)
        self.out: list[torch.Tensor] = []
        self.pixels: list[torch.Tensor] = []
        self.vae = None  # the last rank's streaming decode state
        if cfg.decode:
            self.vae = WanState(cross=st.cond, kv=None, vae_cache=adapter.vae.new_decode_cache())
        self.busy: dict[int, float] = {}  # micro-step -> seconds computing (sends posted, no waits)
        self.stall: dict[int, float] = {}  # micro-step -> seconds waiting for its input
        self.t_end: dict[int, float] = {}
        self.switch: tuple[int, tuple[int, ...]] | None = None
        self.decision: dict[str, Any] = {}
        self.measured: Header | None = None
        self.agree_at, self.why_not = self._agree_at()
        self.pending_fwd: dict[int, Pending] = {}  # micro-step -> posted receive (ranks > 0)
        self.pending_ret: dict[int, Pending] = {}  # micro-step -> posted receive of its return (rank 0)
        numel = math.prod(adapter.latent_shape) * self.F
        self.latent_numel, self.token_numel = numel, self.F * math.prod(st.grid) * adapter.dit.cfg.dim
        self.hsize = Header.size(world, self.L)

    # ---- schedule helpers ---------------------------------------------------------------------

    def _agree_at(self) -> tuple[int | None, str]:
        """The micro-step whose message carries the measurements, or None and why not."""
        cfg, R = self.cfg, self.world
        if R == 1:
            return None, "one rank"
        if not cfg.rebalance:
            return None, "rebalance off"
        at = cfg.rebalance_at if cfg.rebalance_at is not None else self.S * R + cfg.measure
        if at - cfg.measure < 0 or at + R + 1 >= self.M:
            return None, f"the run is too short to measure by micro-step {at} and switch after it"
        return at, ""

    def plan(self, m: int) -> MicroStep:
        return micro_step(m, chunks=self.N, steps=self.S, ranks=self.lag)

    def bounds_at(self, m: int) -> tuple[int, ...]:
        if self.switch is not None and m >= self.switch[0]:
            return self.switch[1]
        return self.bounds

    def _fwd_specs(self, ms: MicroStep) -> list[Spec]:
        n, rows_passes = len(ms.rows), 2 if self.stage.uncond is not None else 1
        hidden = (1 if ms.commit is not None else 0) + n * rows_passes
        return [(self.hsize, torch.float64), (hidden * self.token_numel, self.ad.model_dtype),
                (n * self.latent_numel, torch.float32)]

    def _ret_specs(self, ms: MicroStep) -> list[Spec]:
        return [(self.hsize, torch.float64), (len(ms.rows) * self.latent_numel, torch.float32)]

    def _returns(self, m: int) -> bool:
        """Whether the last rank sends micro-step ``m``'s rows back (a later micro-step takes them)."""
        return 0 <= m and m + self.lag < self.M

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> RankResult:
        if not self.first:
            self.pending_fwd[0] = self.link.recv(self._fwd_specs(self.plan(0)), self.rank - 1, "micro-step 0")
        for m in range(self.M):
            if self.cfg.die_at is not None and tuple(self.cfg.die_at) == (self.rank, m):
                print("PP_DIE " + json.dumps({"rank": self.rank, "micro_step": m, "time": time.time()}),
                      file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: what a crash looks like to the peers
            if self.cfg.hang_at is not None and tuple(self.cfg.hang_at) == (self.rank, m):
                print("PP_HANG " + json.dumps({"rank": self.rank, "micro_step": m, "time": time.time()}),
                      file=sys.stderr, flush=True)
                while True:  # alive, connected, silent: only the peers' deadlines can tell
                    time.sleep(3600)
            self.step(self.plan(m))
        self.link.flush()
        return self._result()

    def step(self, ms: MicroStep) -> None:
        m, r = ms.index, self.rank
        lo, hi = self.bounds_at(m)[r], self.bounds_at(m)[r + 1]
        clock = self.timer.now  # synchronises on a GPU, so busy times are compute, not launches
        t_in = clock()
        if self.first:
            back = self._take_return(m)
            t0 = clock()
            hid = self._inputs(ms, back)
            head = Header(m=m, ranks=self.world, layers=self.L)
            self._decide(m, back, head)
        else:
            hid, head = self._take_forward(ms)
            t0 = clock()
            if head.switch_at >= 0 and self.switch is None:
                self.switch = (head.switch_at, head.bounds)
        self.stall[m] = t0 - t_in
        window = self.agree_at is not None and self.agree_at - self.cfg.measure <= m < self.agree_at
        if window and m == self.agree_at - self.cfg.measure:
            self.timer.reset()
        hid = self.stage.blocks(ms, hid, self.kv, lo, hi, self.timer if window else None)
        if self.last:
            v = self.stage.velocity(ms, hid)
            c = ms.entering
            if c is not None:
                self.rows[c] = self.stage.new_chunk(c)  # the generator of its start draw, replayed
            x = self.stage.advance(ms, hid.x, v, self.rows)  # [n, F, C, H, W]
            if m == self.agree_at:
                self._measure(head, lo, hi, m)
            if self._returns(m):  # rows back first: rank 0 waits for them, the decode can wait
                self.link.send([head.to_tensor(self.ad.device), x], 0, f"return {m}", "return")
            self._finish(ms, x)
            self.t_end[m] = clock()
        else:
            if m == self.agree_at:
                self._measure(head, lo, hi, m)
            parts = [t for t in (hid.commit, hid.cond, hid.uncond) if t is not None]
            flat = torch.cat([t.reshape(-1) for t in parts])
            self.link.send([head.to_tensor(self.ad.device), flat, hid.x], r + 1, f"micro-step {m}")
        self.busy[m] = clock() - t0
        if self.switch is not None and self.switch[0] == m + 1:
            self._move_blocks(self.bounds, self.switch[1])

    # ---- rank 0 -------------------------------------------------------------------------------

    def _take_return(self, m: int) -> tuple[MicroStep, Header, torch.Tensor] | None:
        """The rows of micro-step ``m - R`` back from the last rank; posts the next return first."""
        got = None
        if self._returns(m - self.lag):
            prev = self.plan(m - self.lag)
            hdr, x = self.link.wait(self.pending_ret.pop(m - self.lag))
            xs = x.view(len(prev.rows), self.F, *self.ad.latent_shape)  # [n, F, C, H, W]
            got = (prev, Header.from_tensor(hdr, self.world, self.L), xs)
        nxt = m - self.lag + 1
        if self._returns(nxt):
            spec = self._ret_specs(self.plan(nxt))
            self.pending_ret[nxt] = self.link.recv(spec, self.world - 1, f"return {nxt}", "return")
        return got

    def _inputs(self, ms: MicroStep, back: tuple[MicroStep, Header, torch.Tensor] | None) -> Hidden:
        came = {} if back is None else dict(zip(back[0].chunks, back[2].split(1)))
        xs = torch.cat([self.stage.new_chunk(c).x if s == 0 else came[c] for c, s in ms.rows])  # [n, F, C, H, W]
        commit = came[ms.commit] if ms.commit is not None else None
        return self.stage.start(ms, xs, commit)

    def _decide(self, m: int, back: tuple[MicroStep, Header, torch.Tensor] | None, head: Header) -> None:
        """Rank 0, micro-step ``rebalance_at + R``: every rank's times are back; pick the partition."""
        if self.agree_at is None or m != self.agree_at + self.world:
            return
        got = back[1]
        bt, ov = list(got.block_times), list(got.overheads)
        if self.cfg.block_times is not None:
            bt = [float(t) for t in self.cfg.block_times]
        if self.cfg.overheads is not None:
            ov = [float(t) for t in self.cfg.overheads]
        new = part.balance(bt, ov, self.world, current=self.bounds)
        move = part.worth_moving(self.bounds, new, bt, ov, self.cfg.min_gain)
        self.decision = {"block_times_s": bt, "overheads_s": ov, "proposed": list(new), "moved": move,
                         "stage_times_s": part.stage_times(self.bounds, bt, ov),
                         "stage_times_after_s": part.stage_times(new if move else self.bounds, bt, ov)}
        if move:
            self.switch = (m + 1, tuple(new))
            head.switch_at, head.bounds = m + 1, tuple(new)
        log.info("rebalance at micro-step %d: block times %s s, overheads %s s, stage times %s s; "
                 "partition %s -> %s", m, _fmt(bt), _fmt(ov), _fmt(self.decision["stage_times_s"]), self.bounds,
                 new if move else f"{self.bounds} (kept: gain below {self.cfg.min_gain:.0%})")

    # ---- other ranks ----------------------------------------------------------------------------

    def _take_forward(self, ms: MicroStep) -> tuple[Hidden, Header]:
        m = ms.index
        hdr, flat, x = self.link.wait(self.pending_fwd.pop(m))
        if m + 1 < self.M:
            self.pending_fwd[m + 1] = self.link.recv(self._fwd_specs(self.plan(m + 1)), self.rank - 1,
                                                 f"micro-step {m + 1}")
        head = Header.from_tensor(hdr, self.world, self.L)
        assert head.m == m, f"rank {self.rank} expected micro-step {m}, got {head.m}"
        n = len(ms.rows)
        tok = (self.F, self.stage.grid[0] * self.stage.grid[1], self.ad.dit.cfg.dim)  # [F, S, D]
        sizes = [self.token_numel] * (1 if ms.commit is not None else 0)
        sizes += [n * self.token_numel] * (2 if self.stage.uncond is not None else 1)
        parts = list(flat.split(sizes))
        commit = parts.pop(0).view(1, *tok) if ms.commit is not None else None
        cond = parts.pop(0).view(n, *tok)
        uncond = parts.pop(0).view(n, *tok) if parts else None
        return Hidden(commit=commit, cond=cond, uncond=uncond, x=x.view(n, self.F, *self.ad.latent_shape)), head

    # ---- measurements and block moves -----------------------------------------------------------

    def _measure(self, head: Header, lo: int, hi: int, m: int) -> None:
        """Write this rank's mean block times and overhead over the ``measure`` micro-steps before
        ``m`` into the header."""
        w = self.cfg.measure
        busy = sum(self.busy[k] for k in range(m - w, m)) / w
        blocks = [self.timer.times[i] / w for i in range(lo, hi)]
        head.block_times[lo:hi] = blocks
        head.overheads[self.rank] = max(busy - sum(blocks), 0.0)
        self.measured = Header(m=m, ranks=self.world, layers=self.L, block_times=list(head.block_times),
                               overheads=list(head.overheads))

    def _move_blocks(self, old: tuple[int, ...], new: tuple[int, ...]) -> None:
        """Between micro-steps ``switch - 1`` and ``switch``: each moved block's K/V to its new owner."""
        moved = part.moved_blocks(old, new)
        n_tok = len(self.kv.frames) * self.kv.tokens_per_frame
        cfg = self.ad.dit.cfg
        pending = []
        for layer, a, b in moved:
            if self.rank == a and self.kv.k[layer] is not None:
                self.link.send([self.kv.k[layer], self.kv.v[layer]], b, f"K/V of block {layer}", "kv")
                self.kv.k[layer] = self.kv.v[layer] = None
            elif self.rank == b and n_tok:
                spec = (n_tok * cfg.dim, self.ad.model_dtype)
                pending.append((layer, self.link.recv([spec, spec], a, f"K/V of block {layer}", "kv")))
        for layer, p in pending:
            k, v = self.link.wait(p)
            shape = (1, n_tok, cfg.num_heads, cfg.head_dim)
            self.kv.k[layer], self.kv.v[layer] = k.view(shape), v.view(shape)
        self.link.flush("kv")
        log.info("rank %d: partition %s -> %s from micro-step %d (moved blocks %s)", self.rank, old, new,
                 self.switch[0], [b for b, _, _ in moved])
        self.bounds = new

    # ---- last rank ----------------------------------------------------------------------------

    def _finish(self, ms: MicroStep, x: torch.Tensor) -> None:
        c = ms.finishing
        if c is None:
            return
        x0 = x[ms.chunks.index(c)].unsqueeze(0)  # [1, F, C, H, W]
        assert len(self.out) == c, f"chunk {c} finished out of order"
        self.out.append(x0)
        del self.rows[c]
        if self.vae is not None:
            self.pixels.append(self.ad.decode(x0, self.vae))  # [1, P, 3, H, W]

    def _result(self) -> RankResult:
        win = steady_window(self.N, self.S, self.lag, after=self._steady_after())
        doc: dict[str, Any] = {
            "rank": self.rank, "ranks": self.world, "lag": self.lag, "micro_steps": self.M, "chunks": self.N,
            "frames": self.N * self.F, "partition_before": list(self.start_bounds),
            "partition_after": list(self.bounds), "switch_at": None if self.switch is None else self.switch[0],
            "rebalance_at": self.agree_at, "rebalance_skipped": self.why_not or None,
            "busy_s": _mean(self.busy, win), "stall_s": _mean(self.stall, win), "decision": self.decision or None,
            "measured": None if self.measured is None else {
                "block_times_s": _nan_none(self.measured.block_times),
                "overheads_s": _nan_none(self.measured.overheads)},
        }
        if self.last:
            doc["steady_window"] = list(win) if win else None
            doc["throughput"] = _throughput(self.t_end, win, self.F)
            doc["wall_s"] = (max(self.t_end.values()) - min(self.t_end.values())) if self.t_end else 0.0
        latents = torch.cat(self.out, dim=1) if self.last else None
        frames = torch.cat(self.pixels, dim=1) if self.last and self.pixels else None
        return RankResult(latents=latents, frames=frames, log=doc)

    def _steady_after(self) -> int:
        """Measure throughput from here: after the switch and its drain, or after the measurement."""
        if self.cfg.steady_from is not None:
            return self.cfg.steady_from
        if self.agree_at is None:
            return 0
        return self.agree_at + 2 * self.world + 1


def _mean(per_step: dict[int, float], win: tuple[int, int] | None) -> float | None:
    """The mean over the steady window's micro-steps."""
    if not win:
        return None
    vals = [per_step[m] for m in range(win[0], win[1] + 1) if m in per_step]
    return sum(vals) / len(vals) if vals else None


def _throughput(t_end: dict[int, float], win: tuple[int, int] | None, frames: int) -> float | None:
    """Latent frames per second over the steady window: one chunk leaves per micro-step."""
    if not win or win[0] not in t_end or win[1] not in t_end:
        return None
    span = t_end[win[1]] - t_end[win[0]]
    return frames * (win[1] - win[0]) / span if span > 0 else None


def _nan_none(xs: list[float]) -> list[float | None]:
    """Unmeasured entries as None (JSON has no NaN)."""
    return [None if x != x else x for x in xs]


def _fmt(xs: Any) -> str:
    return "[" + ", ".join("?" if x != x else f"{x:.4f}" for x in xs) + "]"


__all__ = ["RankResult", "Runner"]
