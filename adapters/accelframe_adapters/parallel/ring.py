"""The stream loop's pipeline-parallel ring: the self-forcing DiT's blocks split over ranks
(StreamDiffusionV2 section 4.2) behind ``pipe.stream(..., ranks=R)``.

Rank 0 runs the stream loop (:mod:`accelframe.streaming.loop`) with :class:`Driver` as its adapter:
the real adapter, except that every pass through the DiT runs rank 0's blocks ``[0, b_1)`` here
and goes on down the ring as a message, in the order rank 0 issues them:

- ``INIT``: a new stream's state (every rank builds its own from the prompt: the cross-attention
  K/V are computed, not shipped);
- ``KV``: the stream's KV changes (eviction, sinks, RoPE reset), applied on every rank;
- ``COMMIT``: a clean chunk's tokens after the previous ranks' blocks; every rank writes its blocks'
  K/V (the window applies on every rank alike);
- ``ROWS``: a rows pass (the stream batch's recomputing rows only: a row that a step policy served
  from its cache costs no message): tokens after the previous ranks' blocks, with the rows'
  timesteps, RoPE starts and streams; the last rank runs the head and the guidance combine and
  sends the velocities back to rank 0;
- ``DECODE``: a finished chunk's clean latents, for the rank that decodes its stream (it keeps
  the stream's decode cache and sends the pixels back to rank 0);
- ``REPARTITION``: new block bounds (the rebalance below); every rank sends the K/V of the blocks
  it gives up to their new owner and takes those of the blocks it gains, at that point of the order;
- ``END``: the stream is over; every rank leaves :meth:`Worker.serve`.

**Rebalance** (paper section 4.2, once per run): over the ``measure`` rows passes before pass
``at`` every rank times its blocks (commits and rows passes) and its main thread's busy time; the
others send theirs to rank 0 when they run pass ``at``. When rank 0 starts pass ``at + R`` it
takes their times (a block's time: its rank's block time over its block count, the DiT's blocks
being alike; a rank's overhead: its busy time less its blocks'), computes
:func:`~accelframe_adapters.parallel.partition.balance` and, if
:func:`~accelframe_adapters.parallel.partition.worth_moving`, sends ``REPARTITION`` before that
pass. The numbers do not change: the same blocks run in the same order, only elsewhere.

Each rank sees the same sequence of K/V writes and reads as one process running the same schedule
(messages on a channel keep their order), so R ranks give one process's numbers with ``lanes=R``.
Rank 0's ``submit_rows`` returns at once with a :class:`Pending` result: the stream batch launches
the next lanes' forwards while this one runs on the other ranks, and waits for it ``R - 1``
micro-steps later. Decoding is spread over the ranks by stream (``decode_rank`` None: stream
``k`` on rank ``k mod R``; an int: every stream on that rank), overlapped with the blocks: a chunk
decoded on another rank is emitted by rank 0 one micro-step later, when its pixels are back (its
stream's frames stay in order). Rank 0 also runs the loop, the policies and the embeddings: give
it fewer blocks with ``partition``.

A rank that dies or stops answering is named by :class:`~accelframe_adapters.parallel.comm.RankFailedError`
(``comm``'s deadlines); rank 0's stream loop then ends with that error, its sinks flushed.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, Sequence

import torch

from accelframe.errors import ConfigError
from accelframe.streaming.batch import PendingPixels
from accelframe.types import KVWrite, Request
from accelframe_adapters.parallel import partition as part
from accelframe_adapters.parallel.comm import DistLink, RankFailedError
from accelframe_adapters.wan.dit import cat_cross, rows_pass

INIT, KV, COMMIT, ROWS, END, DECODE, REPARTITION, MOVE, TIMES = 1, 2, 3, 4, 5, 6, 7, 8, 9
OPS = {INIT: "a new stream", KV: "a KV change", COMMIT: "a commit", ROWS: "a rows pass", END: "the end",
       DECODE: "a decode", REPARTITION: "a new partition", MOVE: "a block's K/V", TIMES: "measured times"}
REBALANCE = {"at": 16, "measure": 6, "min_gain": 0.05, "block_times": None, "overheads": None}
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


# ------------------------------------------------------------------------------------------------
# messages: a fixed header, then the body (JSON metadata and tensors)
# ------------------------------------------------------------------------------------------------


class Messages:
    """Ops over a :class:`DistLink`: a header ``[op, n]`` (int64), ``n`` bytes of JSON metadata
    naming the tensors' shapes and dtypes, then the tensors packed in one message (if any)."""

    def __init__(self, link: Any, device: torch.device) -> None:
        self.link, self.device = link, device

    def send(self, dst: int, op: int, meta: dict[str, Any], tensors: Sequence[torch.Tensor] = (),
             channel: str = "forward") -> None:
        meta = {**meta, "tensors": [[list(t.shape), str(t.dtype)] for t in tensors]}
        blob = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8, device=self.device)
        what = OPS.get(op, "a message")
        self.link.send([torch.tensor([op, blob.numel()], dtype=torch.int64, device=self.device)], dst, what,
                       channel)
        self.link.send([blob], dst, what, channel)
        if tensors:
            self.link.send(list(tensors), dst, what, channel)

    def recv(self, src: int, channel: str = "forward") -> tuple[int, dict[str, Any], list[torch.Tensor]]:
        (head,) = self.link.wait(self.link.recv([(2, torch.int64)], src, "the next op", channel))
        op, n = (int(x) for x in head.tolist())
        what = OPS.get(op, f"op {op}")
        (blob,) = self.link.wait(self.link.recv([(n, torch.uint8)], src, what, channel))
        meta = json.loads(bytes(blob.cpu().tolist()).decode())
        shapes = meta["tensors"]
        if not shapes:
            return op, meta, []
        got = self.link.wait(self.link.recv([(_numel(s), _DTYPES[d]) for s, d in shapes], src, what, channel))
        return op, meta, [t.view(s) for t, (s, _) in zip(got, shapes)]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ------------------------------------------------------------------------------------------------
# the stages every rank runs on its blocks
# ------------------------------------------------------------------------------------------------


def commit_blocks(ad: Any, tokens: torch.Tensor, frames: tuple[int, int], state: Any, grid: tuple[int, int, int],
                  lo: int, hi: int) -> torch.Tensor:
    """Blocks ``[lo, hi)`` of the commit pass of clean ``tokens [B, F, S, D]`` (frames ``frames``):
    each writes its K/V into ``state``'s cache (what the adapter's ``commit`` does on all blocks)."""
    t = torch.full(tuple(tokens.shape[:2]), float(ad.config.context_noise), device=tokens.device)  # [B, F]
    kv = state.kv
    p = rows_pass(ad.dit, grid, t, [frames[0] - kv.rope_offset], [None], tokens.device)
    for i in range(lo, hi):
        tokens = ad.dit.blocks[i](tokens, p.e0, state.cross.k[i], state.cross.v[i], p.rope, None, kv, i,
                                  KVWrite.COMMIT)
    kv.finish(range(*frames), KVWrite.COMMIT)
    state.family["next_frame"] = frames[1]
    return tokens


def frame_embeddings(kv: Any, frames: int, lo: int, hi: int) -> torch.Tensor:
    """The newest ``frames`` cached frames' token-mean K and V in blocks ``[lo, hi)``: ``[F, 2 (hi - lo),
    B H Dh]``, K's blocks then V's (the adapter's ``kv_embeddings``, one rank's share of it)."""
    parts = []
    s = kv.tokens_per_frame
    for t in (*kv.k[lo:hi], *kv.v[lo:hi]):  # each [B, Fc * S, H, Dh]
        b, _, h, d = t.shape
        new = t[:, -frames * s:]
        parts.append(new.reshape(b, frames, s, h * d).float().mean(dim=2).permute(1, 0, 2).reshape(frames, -1))
    return torch.stack(parts, dim=1)


def rows_blocks(ad: Any, passes: Sequence[torch.Tensor], sigmas: Sequence[float], starts: Sequence[int],
                states: Sequence[Any], grid: tuple[int, int, int], lo: int,
                hi: int) -> tuple[Any, list[torch.Tensor]]:
    """Blocks ``[lo, hi)`` of a rows pass over ``passes`` (the prompt's tokens, then the negative
    prompt's with guidance: each ``[R, F, S, D]``), read only."""
    t, ropes = ad.rows_timing(sigmas, starts, states, grid[0])
    p = rows_pass(ad.dit, grid, t, ropes, [st.kv for st in states], passes[0].device)
    crosses = [cat_cross([st.cross for st in states])]
    if len(passes) > 1:
        crosses.append(cat_cross([st.family["uncond"] for st in states]))
    return p, [p.blocks(ad.dit, x, c, lo, hi) for x, c in zip(passes, crosses)]


def rows_out(ad: Any, p: Any, passes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The last rank: the head, the guidance combine -> velocities ``[R, F, C, H, W]``."""
    out = p.head(ad.dit, passes[0])
    if len(passes) > 1:
        out_u = p.head(ad.dit, passes[1])
        out = out_u + ad.config.guidance_scale * (out - out_u)
    return ad.from_model(out)


# ------------------------------------------------------------------------------------------------
# rank 0
# ------------------------------------------------------------------------------------------------


class Pending:
    """A rows pass in flight: the receive of its velocities ``shape`` (posted when the pass starts,
    so the last rank's send completes at once); :meth:`result` waits for it."""

    def __init__(self, link: Any, posted: Any, shape: tuple[int, ...], waited: Any) -> None:
        self.link, self.posted, self.shape, self.waited = link, posted, shape, waited
        self.value: torch.Tensor | None = None

    def result(self) -> torch.Tensor:
        if self.value is None:
            t0 = time.perf_counter()
            (v,) = self.link.wait(self.posted)
            self.waited(time.perf_counter() - t0)
            self.value = v.view(self.shape)
        return self.value


class Decoder:
    """This rank's decode thread: a stream's chunks decode here in order while the rank's main
    thread runs its blocks (torch releases the GIL inside its ops, so on the CPU the operating
    system runs the two on whichever core is free; on a GPU it would be a stream of its own)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accelframe-decode")
        self.futures: list[Any] = []

    def submit(self, fn: Any, *args: Any) -> Any:
        def run() -> Any:
            with torch.no_grad():
                return fn(*args)
        self.check()
        fut = self.pool.submit(run)
        self.futures.append(fut)
        return fut

    def check(self) -> None:
        """Raise the first error of a finished decode (a rank > 0 has no caller waiting for it)."""
        while self.futures and self.futures[0].done():
            self.futures.pop(0).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for fut in self.futures:
            fut.result()
        self.futures.clear()


# a chunk decoding on rank 0's decode thread: ready() and result() as RemotePixels, the stream
# batch's own pending pixels
LocalPixels = PendingPixels


class RemotePixels:
    """A chunk decoded on rank ``rank``: the receive of its pixels ``shape`` ``[B, P, 3, H, W]``
    is posted at once (they come back in order per rank); :meth:`ready` says whether they are
    here, :meth:`result` waits for them."""

    def __init__(self, driver: Driver, rank: int, shape: tuple[int, ...]) -> None:
        self.driver, self.rank, self.shape = driver, rank, shape
        link = driver._ring.link
        self.posted = link.recv([(_numel(shape), torch.float32)], rank, "decoded pixels", "pixels")
        self.value: torch.Tensor | None = None

    def ready(self) -> bool:
        self.driver._send_decodes()  # no rows pass came after it: it has to leave now
        return self.value is not None or self.driver._ring.link.ready(self.posted)

    def result(self) -> torch.Tensor:
        self.driver._send_decodes()
        if self.value is None:
            t0 = time.perf_counter()
            (v,) = self.driver._ring.link.wait(self.posted)
            self.driver._ring.wait_time(time.perf_counter() - t0)
            self.value = v.view(self.shape)
        return self.value


class Driver:
    """Rank 0's adapter: the wrapped adapter's methods, with its DiT passes, new states and KV
    changes going down the ring (see the module docstring). A snapshot would need every rank's
    blocks: it is not offered; the per-block K/V summary (``kv_embeddings``) only when the ring
    collects it (``embeddings``)."""

    _HIDDEN = frozenset({"snapshot", "restore", "kv_embeddings"})

    def __init__(self, inner: Any, ring: Ring) -> None:
        from accelframe.streaming.source import FrameMap

        self._inner, self._ring = inner, ring
        self._frames = FrameMap.of(inner)
        self._streams = 0
        self._passes = 0  # rows passes started
        self._later: list[tuple[dict[str, Any], torch.Tensor]] = []  # decodes to send after the next pass
        self._states: dict[int, Any] = {}  # the streams' states by ring id (their K/V may move)
        # with embeddings: per stream, commits sent, and per frame its K/V summary per block
        self._commits: dict[int, int] = {}
        self._got: dict[tuple[int, int], int] = {}  # (rank, stream) -> commits whose summary came
        self._emb: dict[int, dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]]] = {}
        self._mark = 0.0  # rank 0's clock at the start of the measured window
        self._measured: list[dict[str, float]] | None = None  # rank 0's times, then every rank's

    def __getattr__(self, name: str) -> Any:
        if name == "kv_embeddings" and self._ring.embeddings:  # offered only when a policy asks for it
            return self._kv_embeddings
        if name in Driver._HIDDEN:
            raise AttributeError(f"{name}: not on a pipeline-parallel ring (each rank holds its blocks' K/V)")
        return getattr(self._inner, name)

    def init_state(self, request: Request, cond: Any) -> Any:
        state = self._inner.init_state(request, cond)
        state.family["ring_stream"] = sid = self._streams
        self._states[sid] = state
        ring = self._ring
        state.family["ring_decoder"] = dec = sid % ring.world if ring.decode_rank is None else ring.decode_rank
        self._streams += 1
        self._ring.down(INIT, {"stream": sid, "prompt": request.prompts[0], "frames": request.num_frames,
                               "seed": request.seed, "decoder": dec})
        return state

    def decode(self, latents: torch.Tensor, state: Any) -> Any:
        """The chunk's pixels ``[B, P, 3, H, W]`` to come: a :class:`LocalPixels` (rank 0's decode
        thread) or a :class:`RemotePixels` (the stream's decoding rank)."""
        rank = state.family["ring_decoder"]
        if rank == 0:
            return LocalPixels(self._ring.decoder.submit(self._inner.decode, latents.clone(), state))
        # sent after the next rows pass: the decoding rank runs that pass (on the critical path:
        # rank 0 waits for its velocities) before this decode (whose pixels may wait)
        meta = {"stream": state.family["ring_stream"], "decoder": rank}
        self._later.append((meta, latents.float().contiguous()))
        a = state.family.get("ring_decoded", 0)  # latent frames of the stream decoded so far
        b = state.family["ring_decoded"] = a + latents.shape[1]
        pixels = self._frames.pixels(b) - self._frames.pixels(a)  # the causal VAE: 1 + 4 (F - 1) first
        return RemotePixels(self, rank, (latents.shape[0], pixels, 3, *self._inner.pixel_size))

    def _send_decodes(self) -> None:
        for meta, x in self._later:
            self._ring.down(DECODE, meta, [x])
        self._later.clear()

    def kv_apply(self, state: Any, evict: tuple[int, ...], sinks: tuple[int, ...] | None,
                 rope_reset: bool) -> None:
        self._inner.kv_apply(state, evict, sinks, rope_reset)
        self._ring.down(KV, {"stream": state.family["ring_stream"], "evict": list(evict),
                             "sinks": None if sinks is None else list(sinks), "rope_reset": bool(rope_reset)})

    def denoise(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        from accelframe.errors import IncompatibleError

        raise IncompatibleError("a pipeline-parallel ring runs the stream batch's rows (denoise_rows); "
                                "one-block denoise calls (sequential generation) run with ranks=1")

    @torch.no_grad()
    def commit(self, x0: torch.Tensor, frames: tuple[int, int], state: Any) -> None:
        ad, (lo, hi) = self._inner, self._ring.blocks
        tokens, grid = ad.dit.embed(ad.to_model(x0))  # [B, F, S, D]
        t0 = time.perf_counter()
        tokens = commit_blocks(ad, tokens, frames, state, grid, lo, hi)
        if self._in_window():
            self._ring.stage_s += time.perf_counter() - t0
        if self._ring.embeddings:
            sid = state.family["ring_stream"]
            self._keep_embeddings(sid, frames, lo, hi, frame_embeddings(state.kv, frames[1] - frames[0], lo, hi))
            self._commits[sid] = self._commits.get(sid, 0) + 1
        self._ring.down(COMMIT, {"stream": state.family["ring_stream"], "frames": list(frames),
                                 "grid": list(grid)}, [tokens])

    @torch.no_grad()
    def submit_rows(self, xs: torch.Tensor, sigmas: Sequence[float], starts: Sequence[int],
                    states: Sequence[Any]) -> Pending:
        """Start a rows pass (``denoise_rows``' arguments): rank 0's blocks now, the rest on the ring."""
        self._rebalance()
        ad, (lo, hi) = self._inner, self._ring.blocks
        tokens, grid = ad.dit.embed(ad.to_model(xs))  # [R, F, S, D]
        passes = [tokens] * (2 if ad.config.guidance_scale > 1.0 else 1)
        t0 = time.perf_counter()
        _, passes = rows_blocks(ad, passes, sigmas, starts, states, grid, lo, hi)
        if self._ring.measuring(self._passes):
            self._ring.stage_s += time.perf_counter() - t0
        self._ring.down(ROWS, {"streams": [st.family["ring_stream"] for st in states],
                               "sigmas": [float(s) for s in sigmas], "starts": [int(s) for s in starts],
                               "grid": list(grid)}, passes)
        self._send_decodes()
        shape = (xs.shape[0], *xs.shape[1:])  # [R, F, C, H, W]: the velocities, float32
        posted = self._ring.link.recv([(_numel(shape), torch.float32)], self._ring.world - 1,
                                      f"the velocities of rows pass {self._passes}", "return")
        self._passes += 1
        return Pending(self._ring.link, posted, shape, self._ring.wait_time)

    def denoise_rows(self, xs: torch.Tensor, sigmas: Sequence[float], starts: Sequence[int],
                     states: Sequence[Any]) -> torch.Tensor:
        return self.submit_rows(xs, sigmas, starts, states).result()

    def _keep_embeddings(self, sid: int, frames: Sequence[int], lo: int, hi: int, emb: torch.Tensor) -> None:
        per = self._emb.setdefault(sid, {})
        n = hi - lo
        for j, f in enumerate(range(frames[0], frames[1])):
            blocks = per.setdefault(f, {})
            for i, layer in enumerate(range(lo, hi)):
                blocks[layer] = (emb[j, i], emb[j, n + i])

    def _kv_embeddings(self, state: Any) -> dict[int, torch.Tensor]:
        """Per cached frame, its token-mean K and V in every block, ``[2 L, B H Dh]`` (the adapter's
        ``kv_embeddings``): rank 0's blocks from here, the others' from their ranks, waited for up to
        the stream's last commit."""
        sid, ring = state.family["ring_stream"], self._ring
        for r in range(1, ring.world):
            while self._got.get((r, sid), 0) < self._commits.get(sid, 0):
                _, meta, (emb,) = ring.msgs.recv(r, "emb")
                self._got[(r, meta["stream"])] = self._got.get((r, meta["stream"]), 0) + 1
                self._keep_embeddings(meta["stream"], meta["frames"], *meta["blocks"], emb)
        kv, per = state.kv, self._emb.get(sid, {})
        if kv is None or not kv.frames:
            return {}
        for f in [f for f in per if f not in kv.frames]:
            del per[f]  # evicted: never asked again
        layers = range(kv.num_layers)
        return {f: torch.stack([per[f][layer][0] for layer in layers] + [per[f][layer][1] for layer in layers])
                for f in kv.frames}

    def _in_window(self) -> bool:
        rb = self._ring.rebalance
        return rb is not None and rb["at"] - rb["measure"] <= self._passes - 1 < rb["at"]

    def _rebalance(self) -> None:
        """Before rows pass ``k``: start or end the measured window; at ``at + R`` decide."""
        ring, rb, k = self._ring, self._ring.rebalance, self._passes
        if rb is None:
            return
        now = time.perf_counter()
        if k == rb["at"] - rb["measure"]:
            self._mark, ring.waited, ring.stage_s = now, 0.0, 0.0
        elif k == rb["at"]:  # rank 0's busy time: the window's wall time less its waits
            ring.busy_s = (now - self._mark) - ring.waited
            self._measured = [ring.times()]
        elif k == rb["at"] + ring.world and self._measured is not None:
            for r in range(1, ring.world):
                got = ring.msgs.recv(r, "kv")[1]
                self._measured.append({key: v for key, v in got.items() if key != "tensors"})
            new = ring.decide(self._measured)
            if new is not None:
                ring.down(REPARTITION, {"bounds": list(new)})
                ring.move(new, self._states)


# ------------------------------------------------------------------------------------------------
# the other ranks
# ------------------------------------------------------------------------------------------------


class Worker:
    """A rank > 0: its own state per stream (its blocks' K/V), and the loop that runs what comes."""

    def __init__(self, ad: Any, ring: Ring) -> None:
        self.ad, self.ring = ad, ring
        self.states: dict[int, Any] = {}
        self.ops = 0  # ops handled (what a test that kills a rank mid-stream counts)
        self.rows = 0  # rows passes handled
        self.in_window = False  # the last rows pass was measured: so are the commits after it

    @torch.no_grad()
    def serve(self) -> None:
        ring, rb = self.ring, self.ring.rebalance
        while True:
            op, meta, tensors = ring.msgs.recv(ring.rank - 1)
            self.ops += 1
            if op == ROWS:  # the measured window: its rows passes and what comes between them
                if rb is not None and self.rows == rb["at"] - rb["measure"]:
                    ring.stage_s = ring.busy_s = 0.0
                self.in_window = ring.measuring(self.rows)
            t0 = time.perf_counter()
            done = self.handle(op, meta, tensors)
            if self.in_window:
                ring.busy_s += time.perf_counter() - t0
            if op == ROWS:
                if rb is not None and self.rows == rb["at"] - 1:
                    ring.msgs.send(0, TIMES, ring.times(), (), "kv")  # what rank 0 balances with
                self.rows += 1
            if done:
                return

    def _decode(self, latents: torch.Tensor, state: Any) -> None:
        pixels = self.ad.decode(latents, state)  # [B, P, 3, H, W]
        self.ring.link.send([pixels.float().contiguous()], 0, "decoded pixels", "pixels")

    def handle(self, op: int, meta: dict[str, Any], tensors: list[torch.Tensor]) -> bool:
        """Run one op on this rank's blocks and pass it on; True at the end."""
        ad, ring, (lo, hi) = self.ad, self.ring, self.ring.blocks
        meta = {k: v for k, v in meta.items() if k != "tensors"}
        if op == INIT:
            req = Request(prompts=(meta["prompt"],), num_frames=meta["frames"], seed=meta["seed"])
            self.states[meta["stream"]] = ad.init_state(req, ad.encode_prompt([meta["prompt"]]))
        elif op == KV:
            sinks = None if meta["sinks"] is None else tuple(meta["sinks"])
            ad.kv_apply(self.states[meta["stream"]], tuple(meta["evict"]), sinks, meta["rope_reset"])
        elif op == COMMIT:
            t0 = time.perf_counter()
            tensors = [commit_blocks(ad, tensors[0], tuple(meta["frames"]), self.states[meta["stream"]],
                                     tuple(meta["grid"]), lo, hi)]
            if self.in_window:
                ring.stage_s += time.perf_counter() - t0
            if ring.embeddings:  # rank 0 compares every layer's K/V (rolling-kv's sink refresh)
                f = meta["frames"][1] - meta["frames"][0]
                emb = frame_embeddings(self.states[meta["stream"]].kv, f, lo, hi)
                ring.msgs.send(0, COMMIT, {"stream": meta["stream"], "frames": meta["frames"], "blocks": [lo, hi]},
                               [emb], "emb")
            if ring.last:
                return False  # the last rank's commit ends here: nothing reads its output
        elif op == ROWS:
            states = [self.states[s] for s in meta["streams"]]
            t0 = time.perf_counter()
            p, tensors = rows_blocks(ad, tensors, meta["sigmas"], meta["starts"], states, tuple(meta["grid"]),
                                     lo, hi)
            if self.in_window:
                ring.stage_s += time.perf_counter() - t0
            if ring.last:
                ring.link.send([rows_out(ad, p, tensors).float()], 0, "velocities", "return")
                return False
        elif op == DECODE:
            if meta["decoder"] == ring.rank:  # on the decode thread, in order; the pixels go to rank 0
                ring.decoder.submit(self._decode, tensors[0].clone(), self.states[meta["stream"]])
                return False  # the ranks after this one have nothing to do with it
        elif op == REPARTITION:
            if not ring.last:
                ring.msgs.send(ring.rank + 1, op, meta, tensors)  # the next rank may wait for this one's K/V
            ring.move(tuple(meta["bounds"]), self.states)
            return False
        elif op != END:
            raise AssertionError(f"rank {ring.rank}: unknown op {op}")
        if not ring.last:
            ring.msgs.send(ring.rank + 1, op, meta, tensors)
        return op == END


# ------------------------------------------------------------------------------------------------
# joining
# ------------------------------------------------------------------------------------------------


class Ring:
    """This process's place in the ring: its rank, its blocks ``[lo, hi)``, its messages."""

    def __init__(self, adapter: Any, rank: int, world: int, bounds: tuple[int, ...], link: Any,
                 decode_rank: int | None = None, rebalance: dict[str, Any] | None = None,
                 embeddings: bool = False) -> None:
        self.rank, self.world, self.bounds, self.decode_rank = rank, world, bounds, decode_rank
        self.embeddings = embeddings  # every commit's K/V summary goes to rank 0 (kv_embeddings)
        self.rebalance = rebalance  # None: the partition stays
        self.stage_s = self.busy_s = 0.0  # measured: this rank's blocks, its main thread
        self.log: dict[str, Any] = {}  # rank 0: the rebalance's decision
        self.waited = 0.0  # rank 0: seconds waiting for velocities and pixels
        self.blocks = (bounds[rank], bounds[rank + 1])
        self.driver, self.last = rank == 0, rank == world - 1
        self.link = link
        self.msgs = Messages(link, adapter.device)
        self.adapter = Driver(adapter, self) if self.driver else None
        self.worker = None if self.driver else Worker(adapter, self)
        self.decoder = Decoder()
        self._closed = False

    def down(self, op: int, meta: dict[str, Any], tensors: Sequence[torch.Tensor] = ()) -> None:
        self.msgs.send(1, op, meta, tensors)

    # ---- the rebalance ------------------------------------------------------------------------

    def wait_time(self, seconds: float) -> None:
        self.waited += seconds

    def measuring(self, rows_pass: int) -> bool:
        """Whether rows pass ``rows_pass`` is in the measured window."""
        rb = self.rebalance
        return rb is not None and rb["at"] - rb["measure"] <= rows_pass < rb["at"]

    def times(self) -> dict[str, float]:
        n = self.rebalance["measure"]
        return {"stage_s": self.stage_s / n, "busy_s": self.busy_s / n, "blocks": self.blocks[1] - self.blocks[0]}

    def decide(self, measured: list[dict[str, float]]) -> tuple[int, ...] | None:
        """Rank 0: the partition the measured times ask for, or None to keep this one."""
        rb, layers = self.rebalance, self.bounds[-1]
        blocks: list[float] = []
        for m in measured:
            blocks += [m["stage_s"] / max(m["blocks"], 1)] * int(m["blocks"])
        over = [max(m["busy_s"] - m["stage_s"], 0.0) for m in measured]
        blocks = list(rb["block_times"] or blocks)[:layers]
        over = list(rb["overheads"] or over)
        new = part.balance(blocks, over, self.world, current=self.bounds)
        move = part.worth_moving(self.bounds, new, blocks, over, rb["min_gain"])
        self.log = {"measured": measured, "block_times_s": blocks, "overheads_s": over,
                    "partition_before": list(self.bounds), "proposed": list(new), "moved": move,
                    "stage_times_s": part.stage_times(self.bounds, blocks, over),
                    "stage_times_after_s": part.stage_times(new if move else self.bounds, blocks, over)}
        return tuple(new) if move else None

    def move(self, new: tuple[int, ...], states: dict[int, Any]) -> None:
        """Switch to ``new`` bounds: the K/V of each block this rank gives up to its new owner, those
        of the blocks it gains from their old owner (every stream's, at this point of the order)."""
        moved = part.moved_blocks(self.bounds, new)
        for layer, a, b in moved:
            if a == self.rank:
                has = [sid for sid in sorted(states) if states[sid].kv.k[layer] is not None]
                kv = [t for sid in has for t in (states[sid].kv.k[layer], states[sid].kv.v[layer])]
                self.msgs.send(b, MOVE, {"layer": layer, "streams": has}, kv, "kv")
                for sid in has:
                    states[sid].kv.k[layer] = states[sid].kv.v[layer] = None
        for layer, a, b in moved:
            if b == self.rank:
                _, meta, kv = self.msgs.recv(a, "kv")
                assert meta["layer"] == layer, f"rank {self.rank}: K/V of block {layer}, not {meta['layer']}"
                for i, sid in enumerate(meta["streams"]):
                    states[sid].kv.k[layer], states[sid].kv.v[layer] = kv[2 * i].clone(), kv[2 * i + 1].clone()
        self.bounds, self.blocks = new, (new[self.rank], new[self.rank + 1])

    def serve(self) -> None:
        try:
            self.worker.serve()
            self.decoder.close()  # its last pixels sent
            self.link.flush()
        finally:
            self._leave()

    def close(self) -> None:
        """Rank 0: the end (every rank leaves its loop), then leave the process group."""
        if self._closed:
            return
        try:
            self.decoder.close()
            self.down(END, {})
            self.link.flush()
        except RankFailedError:
            pass  # a rank already failed: the stream's error names it
        finally:
            self._leave()

    def _leave(self) -> None:
        if self._closed:
            return
        self._closed = True
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def check_rebalance(rebalance: Any, layers: int, ranks: int) -> dict[str, Any] | None:
    """``rebalance`` as the ring's settings: True (the defaults, :data:`REBALANCE`), False (the
    partition stays) or a dict of some of its keys (``block_times`` / ``overheads`` replace the
    measured times: the tests force moves with them); a ConfigError names a bad one."""
    if rebalance is False or ranks == 1:
        return None
    if rebalance is True:
        return dict(REBALANCE)
    if not isinstance(rebalance, dict) or set(rebalance) - set(REBALANCE):
        raise ConfigError("StreamLoop", "rebalance", rebalance,
                          f"True, False or a dict with keys among {sorted(REBALANCE)}")
    rb = {**REBALANCE, **rebalance}
    ok = (isinstance(rb["at"], int) and isinstance(rb["measure"], int) and 1 <= rb["measure"] <= rb["at"]
          and 0.0 <= rb["min_gain"] < 1.0
          and (rb["block_times"] is None or len(rb["block_times"]) == layers)
          and (rb["overheads"] is None or len(rb["overheads"]) == ranks))
    if not ok:
        raise ConfigError("StreamLoop", "rebalance", rebalance,
                          f"at >= measure >= 1 rows passes, min_gain in [0, 1), block_times {layers} numbers, "
                          f"overheads {ranks} numbers")
    return rb


def join(adapter: Any, ranks: int, *, partition: Sequence[int] | None = None, timeout_s: float = 60.0,
         decode_rank: int | None = None, rebalance: Any = True, kv_embeddings: bool = False,
         env: dict[str, str] | None = None) -> Ring:
    """Join the ring of ``ranks`` processes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from
    ``env``, default the environment: torchrun's); gloo on the CPU, nccl on a GPU. The settings
    are checked before joining (``decode_rank`` by the stream loop, which calls this)."""
    import torch.distributed as dist

    env = dict(os.environ if env is None else env)
    world = int(env.get("WORLD_SIZE", "1"))
    if world != ranks or "RANK" not in env or "MASTER_PORT" not in env:
        raise ConfigError("StreamLoop", "ranks", ranks,
                          f"a process of a {ranks}-rank launch (torchrun --nproc-per-node {ranks} ..., or "
                          f"accelframe stream --ranks {ranks}); this one has WORLD_SIZE={env.get('WORLD_SIZE')} "
                          f"RANK={env.get('RANK')} MASTER_PORT={env.get('MASTER_PORT')}")
    layers = adapter.dit.cfg.num_layers
    if ranks > layers:
        raise ConfigError("StreamLoop", "ranks", ranks, f"1 to {layers}: the DiT has {layers} blocks")
    bounds = tuple(partition) if partition is not None else part.even_partition(layers, ranks)
    part.check_partition(bounds, layers, ranks)
    rb = check_rebalance(rebalance, layers, ranks)  # before joining: a bad value must not leave peers waiting
    rank = int(env["RANK"])
    device = torch.device(adapter.device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=ranks,
                                init_method=f"tcp://{env.get('MASTER_ADDR', '127.0.0.1')}:{env['MASTER_PORT']}",
                                timeout=datetime.timedelta(seconds=max(timeout_s, 120.0)))
    except RuntimeError as exc:
        raise RankFailedError(None, seen_by=rank, during="joining the process group",
                              cause=str(exc).splitlines()[0][:300]) from exc
    return Ring(adapter, rank, ranks, bounds, DistLink(rank, ranks, device, timeout_s), decode_rank, rb,
                kv_embeddings)


__all__ = ["REBALANCE", "Decoder", "Driver", "LocalPixels", "Messages", "Pending", "RemotePixels", "Ring",
           "Worker", "check_rebalance", "frame_embeddings", "join"]
