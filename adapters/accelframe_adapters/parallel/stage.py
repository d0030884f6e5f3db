"""The self-forcing world model cut into pipeline stages: inputs, a range of DiT blocks, outputs.

One micro-step (:class:`~accelframe_adapters.parallel.schedule.MicroStep`) on a stage:

- :meth:`Stage.start` (rank 0): patch-embeds the commit row (the clean latent of the chunk being
  committed) and the denoising rows (one batch: one stream, so every row reads the same cache);
- :meth:`Stage.blocks` (every rank, its blocks ``[lo, hi)``): first the commit row through the
  blocks, writing its K/V (then the cache's window applies), then the rows, read only, once with
  the prompt and once with the negative prompt when guidance is on;
- :meth:`Stage.velocity` and :meth:`Stage.advance` (last rank): the head, the guidance combine, and
  the adapter's ``advance`` of every row with the chunk's own generator.

The arithmetic is the single-process stream batch's op for op (``forward_rows`` with one shared
cache, the adapter's ``commit`` pass, ``denoise_rows``' guidance, ``micro_step``'s advance), so a run
cut into stages gives the same bits as one process running the same schedule. Time embeddings,
RoPE rotations and the text's K/V are computed on every rank from the schedule (cheaper than
shipping them); every rank holds the whole model's weights, so a rebalance moves only K/V.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch

from accelframe.adapter import adapter_device, adapter_dtype
from accelframe.rng import start_noise
from accelframe.streaming.batch import chunk_steps
from accelframe.types import KVWrite, Request
from accelframe_adapters.parallel.schedule import MicroStep
from accelframe_adapters.wan.dit import CrossCache, KVCache, rope_freqs


@attrs.define(eq=False)
class Row:
    """A chunk in the pipe: its start noise ``x [1, F, C, H, W]``, its denoising iterations and its
    generator (drawn as the step executor draws a unit's noise, so the bits agree)."""

    x: torch.Tensor
    steps: list[Any]
    generator: torch.Generator


@attrs.define(eq=False)
class Hidden:
    """A micro-step's activations between stages: token grids ``[n, F, S, D]`` (model dtype) and the
    rows' latents ``[n, F, C, H, W]`` (float32), which the last rank's solver step needs."""

    commit: torch.Tensor | None  # [1, F, S, D]
    cond: torch.Tensor  # [n, F, S, D]
    uncond: torch.Tensor | None  # [n, F, S, D], with guidance
    x: torch.Tensor  # [n, F, C, H, W]


@attrs.define(eq=False)
class SharedContext:
    """The cache as the rows read it: every row of the one stream attends to the same committed
    frames (``RowsContext`` with equal lengths: the cache repeated per row, no mask)."""

    kv: KVCache
    rows: int
    _last: tuple[int, Any] = (-1, None)  # the prompt and negative-prompt passes read the same layer

    def context(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self._last[0] != layer:
            k, v = self.kv.k[layer], self.kv.v[layer]  # [1, Nc, H, Dh]
            both = (None, None) if k is None else (torch.cat([k] * self.rows), torch.cat([v] * self.rows))
            self._last = (layer, both)  # [n, Nc, H, Dh] each
        return self._last[1]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, mode: KVWrite) -> None:
        raise AssertionError("the denoising rows write no K/V")


class BlockTimer:
    """Wall time per DiT block, summed over the passes of a micro-step (synchronised on a GPU)."""

    def __init__(self, num_layers: int, device: torch.device) -> None:
        self.times = [0.0] * num_layers
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset(self) -> None:
        self.times = [0.0] * len(self.times)


class Stage:
    """The model side of one rank (or of the whole single-process reference) for one stream."""

    def __init__(self, adapter: Any, *, prompt: str, seed: int, stream_index: int = 0) -> None:
        self.ad, self.dit = adapter, adapter.dit
        self.prompt, self.seed, self.stream_index = prompt, seed, stream_index
        self.frames = adapter.unit_frames
        probe = Request(prompts=(prompt,), num_frames=self.frames, seed=seed)
        self.iterations = chunk_steps(adapter, probe)  # a chunk's denoising calls
        self.sigmas = [it.sigma[0] for it in self.iterations]
        self.guidance = float(getattr(adapter.config, "guidance_scale", 1.0))
        self.cond = adapter.encode_prompt([prompt])
        self.uncond = adapter.encode_prompt([adapter.config.negative_prompt]) if self.guidance > 1.0 else None
        _, ph, pw = self.dit.cfg.patch_size
        self.grid = (adapter.latent_shape[1] // ph, adapter.latent_shape[2] // pw)  # tokens (h, w)
        self.context_noise = float(adapter.config.context_noise)
        self._memo: dict[Any, Any] = {}

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    @property
    def num_layers(self) -> int:
        return self.dit.cfg.num_layers

    # ---- rows -------------------------------------------------------------------------------

    def new_chunk(self, c: int) -> Row:
        """Chunk ``c`` entering the pipe: its start noise and generator, the executor's bits."""
        a = c * self.frames
        req = Request(prompts=(self.prompt,), num_frames=self.frames, seed=self.seed, first_frame=a)
        x, g = start_noise(self.seed, c, self.stream_index, (1, self.frames, *self.ad.latent_shape),
                           adapter_device(self.ad), adapter_dtype(self.ad))  # [1, F, C, H, W]
        return Row(x=x, steps=chunk_steps(self.ad, req), generator=g)

    # ---- per micro-step conditioning (memoised: the steady state repeats it) -------------------

    def _rows_time(self, ms: MicroStep) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("t", tuple(s for _, s in ms.rows))
        if key not in self._memo:
            its = [self.iterations[s] for _, s in ms.rows]
            t = torch.stack([self.ad.timesteps(it, it.frames) for it in its])  # [n, F], denoise_rows' values
            self._memo[key] = self.dit.time_embed(t)  # [n, F, D], [n, F, 6, D]
        return self._memo[key]

    def _commit_time(self) -> tuple[torch.Tensor, torch.Tensor]:
        if ("tc",) not in self._memo:
            t = torch.full((1, self.frames), self.context_noise, device=self.ad.device)  # [1, F]
            self._memo[("tc",)] = self.dit.time_embed(t)
        return self._memo[("tc",)]

    def _rope(self, first_frames: tuple[int, ...]) -> torch.Tensor:
        """Rotations of rows starting at these frames: ``[N, 1, Dh / 2]``, or ``[n, N, 1, Dh / 2]``
        when the rows' positions differ (``forward_rows``' choice)."""
        h, w = self.grid
        tables = self.dit.rope_on(self.ad.device)
        ropes = [rope_freqs(tables, torch.arange(a, a + self.frames, device=self.ad.device), h, w)
                 for a in first_frames]  # each [N, 1, Dh / 2]
        return ropes[0] if len(set(first_frames)) == 1 else torch.stack(ropes)

    def _cross(self, which: CrossCache, n: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n == 1:
            return which.k[layer], which.v[layer]
        key = ("cross", id(which), n, layer)
        if key not in self._memo:
            self._memo[key] = (torch.cat([which.k[layer]] * n), torch.cat([which.v[layer]] * n))
        return self._memo[key]

    # ---- the stages -------------------------------------------------------------------------

    def start(self, ms: MicroStep, xs: torch.Tensor, commit_x: torch.Tensor | None) -> Hidden:
        """Rank 0: embed the rows ``xs [n, F, C, H, W]`` and the commit row's clean latent."""
        tokens, _ = self.dit.embed(self.ad.to_model(xs))  # [n, F, S, D]
        commit = None
        if commit_x is not None:
            commit, _ = self.dit.embed(self.ad.to_model(commit_x))  # [1, F, S, D]
        return Hidden(commit=commit, cond=tokens, uncond=tokens if self.uncond is not None else None, x=xs)

    def blocks(self, ms: MicroStep, hid: Hidden, kv: KVCache, lo: int, hi: int,
               timer: BlockTimer | None = None) -> Hidden:
        """Blocks ``[lo, hi)`` of micro-step ``ms``: the commit row (writing K/V), then the rows."""
        clock = timer.now if timer is not None else time.perf_counter
        commit = hid.commit
        if ms.commit is not None:
            a = ms.commit * self.frames
            _, e0 = self._commit_time()
            rope = self._rope((a,))
            for i in range(lo, hi):
                t0 = clock()
                ck, cv = self._cross(self.cond, 1, i)
                commit = self.dit.blocks[i](commit, e0, ck, cv, rope, None, kv, i, KVWrite.COMMIT)
                if timer is not None:
                    timer.times[i] += clock() - t0
            kv.finish(range(a, a + self.frames), KVWrite.COMMIT)  # every rank: frames and window agree
        n = len(ms.rows)
        _, e0 = self._rows_time(ms)
        rope = self._rope(tuple(c * self.frames for c in ms.chunks))
        view = SharedContext(kv=kv, rows=n)
        cond, uncond = hid.cond, hid.uncond
        for i in range(lo, hi):
            t0 = clock()
            cond = self.dit.blocks[i](cond, e0, *self._cross(self.cond, n, i), rope, None, view, i, KVWrite.NONE)
            if uncond is not None:
                uncond = self.dit.blocks[i](uncond, e0, *self._cross(self.uncond, n, i), rope, None, view, i,
                                            KVWrite.NONE)
            if timer is not None:
                timer.times[i] += clock() - t0
        return Hidden(commit=commit, cond=cond, uncond=uncond, x=hid.x)

    def velocity(self, ms: MicroStep, hid: Hidden) -> torch.Tensor:
        """Last rank: the head and the guidance combine -> velocities ``[n, F, C, H, W]``."""
        e, _ = self._rows_time(ms)
        out = self._head(hid.cond, e)
        if hid.uncond is not None:
            out_u = self._head(hid.uncond, e)
            out = out_u + self.guidance * (out - out_u)
        return self.ad.from_model(out)

    def _head(self, tokens: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        n, f = tokens.shape[:2]
        h, w = self.grid
        pt, ph, pw = self.dit.cfg.patch_size
        out = self.dit.head(tokens, e)  # [n, F, S, pt * ph * pw * C]
        out = out.view(n, f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)  # [n, C, F, pt, h, ph, w, pw]
        return out.reshape(n, -1, f * pt, h * ph, w * pw)  # [n, C, F, H, W]

    def advance(self, ms: MicroStep, x: torch.Tensor, v: torch.Tensor, rows: dict[int, Row]) -> torch.Tensor:
        """Last rank: every row one step on, with its chunk's generator -> ``[n, F, C, H, W]``."""
        out = []
        for i, (c, s) in enumerate(ms.rows):
            row = rows[c]
            out.append(self.ad.advance(x[i:i + 1], v[i:i + 1], row.steps[s], row.generator, None))
        return torch.cat(out)


__all__ = ["BlockTimer", "Hidden", "Row", "SharedContext", "Stage"]
